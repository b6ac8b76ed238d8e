import { type FSWatcher, watch } from "node:fs";
import { basename, dirname } from "node:path";
import type { Logger } from "../../lib/logger.js";
import { createTermMatcher, loadTerms, type TermMatcher } from "./terms.js";

/** A matcher whose term list can be replaced while the process serves. */
export interface ReloadableMatcher extends TermMatcher {
  /**
   * Reads the file again, at or after the time of the call; on any error the
   * current list stays.
   */
  reload(): Promise<void>;
  /** Stops watching the file and listening for SIGHUP. */
  close(): void;
}

/** How long the file must be quiet before a change is read. */
const settleMs = 100;

/**
 * The filter's terms from FILTER_TERMS_FILE, reloaded without a restart on
 * SIGHUP and when the file changes. The new list is built completely before
 * it replaces the old one, so every call sees one whole list.
 *
 * Reloads run one at a time: one asked for while another runs is done once
 * that one ends (requests in the meantime share it), so the last list read
 * is always the newest and a slow read of an older file never wins.
 *
 * The watch is on the file's directory, not on the file: editors save by
 * renaming a new file over the old one, and a watch on the file would keep
 * following the old, replaced inode.
 */
export async function createReloadableMatcher(
  path: string | undefined,
  logger: Logger,
): Promise<ReloadableMatcher> {
  let current = createTermMatcher(await loadTerms(path));
  let watcher: FSWatcher | undefined;
  let debounce: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let queued: Promise<void> | undefined;

  const readOnce = async () => {
    try {
      const next = createTermMatcher(await loadTerms(path));
      current = next;
      logger.info({ terms: next.size, file: path ?? null }, "banned terms reloaded");
    } catch (err) {
      logger.error({ err, file: path }, "banned terms not reloaded; the previous list stays");
    }
  };
  const reload = (): Promise<void> => {
    if (queued !== undefined) return queued;
    if (running === undefined) {
      running = readOnce().finally(() => {
        running = undefined;
      });
      return running;
    }
    queued = running.then(() => {
      queued = undefined;
      return reload();
    });
    return queued;
  };
  const onSighup = () => void reload();
  process.on("SIGHUP", onSighup);
  if (path !== undefined) {
    const name = basename(path);
    const onWarn = (err: unknown) =>
      logger.warn({ err, file: path }, "cannot watch the terms file; SIGHUP still reloads");
    try {
      watcher = watch(dirname(path), (_event, changed) => {
        // Some platforms do not say which file changed: then it may be this one.
        if (changed !== null && changed !== name) return;
        clearTimeout(debounce);
        debounce = setTimeout(() => void reload(), settleMs);
      });
      watcher.on("error", onWarn);
    } catch (err) {
      onWarn(err);
    }
  }
  return {
    get size() {
      return current.size;
    },
    matches: (text) => current.matches(text),
    reload,
    close() {
      process.off("SIGHUP", onSighup);
      clearTimeout(debounce);
      watcher?.close();
    },
  };
}
