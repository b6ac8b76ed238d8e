import { type FSWatcher, watch } from "node:fs";
import { stat } from "node:fs/promises";
import { basename, dirname } from "node:path";
import type { Logger } from "../../lib/logger.js";
import { runStepsInSlices } from "../../lib/steps.js";
import { createTermMatcher, loadTerms, type TermMatcher, termMatcherSteps } from "./terms.js";

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

/** The file `path` leads to, as one string that changes when it does; undefined when there is none. */
async function fileAt(path: string | undefined): Promise<string | undefined> {
  if (path === undefined) return undefined;
  try {
    const s = await stat(path, { bigint: true });
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
  } catch {
    return undefined;
  }
}

/** How long the file must be quiet before a change is read. */
const settleMs = 100;

/**
 * The filter's terms from FILTER_TERMS_FILE, reloaded without a restart on
 * SIGHUP and when the file changes. The new list is built completely before
 * it replaces the old one, so every call sees one whole list; it is built in
 * slices of a few milliseconds, calls being served by the old list between
 * them (20,000 terms took ~150 ms in all here, no slice over 20 ms; 100,000
 * terms ~2.6 s, the longest slice ~80 ms, likely a rehash of the trie's Map).
 *
 * Reloads run one at a time: one asked for while another runs is done once
 * that one ends (requests in the meantime share it), so the last list read
 * is always the newest and a slow read of an older file never wins.
 *
 * The watch is on the file's directory, not on the file: editors save by
 * renaming a new file over the old one, and a watch on the file would keep
 * following the old, replaced inode. A change to another name in the
 * directory reloads when the file the path leads to is no longer the one last
 * read: a Kubernetes ConfigMap volume updates the path's symlink by renaming
 * a symlink (`..data`) it goes through.
 */
export async function createReloadableMatcher(
  path: string | undefined,
  logger: Logger,
): Promise<ReloadableMatcher> {
  // The file last read (or tried), as the path led to it: undefined when there was none.
  let lastRead = await fileAt(path);
  let current = createTermMatcher(await loadTerms(path));
  let watcher: FSWatcher | undefined;
  let debounce: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let queued: Promise<void> | undefined;

  let closed = false;

  const readOnce = async () => {
    try {
      lastRead = await fileAt(path);
      const terms = await loadTerms(path);
      // A file being written (emptied by `>`, say) is read with nothing in
      // it: taken, it would turn blocking off until the next good read.
      if (terms.length === 0) {
        throw new Error("the file holds no terms; a list with no terms takes a restart");
      }
      const next = await runStepsInSlices(termMatcherSteps(terms), () => closed);
      if (next === undefined) return;
      current = next;
      logger.info({ terms: next.size, file: path ?? null }, "banned terms reloaded");
    } catch (err) {
      logger.error({ err, file: path }, "banned terms not reloaded; the previous list stays");
    }
  };
  const reload = (): Promise<void> => {
    if (closed) return Promise.resolve();
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
    // Whether an event since the last check named the file itself.
    let named = false;
    const check = async () => {
      debounce = undefined;
      const ours = named;
      named = false;
      if (ours || (await fileAt(path)) !== lastRead) await reload();
    };
    const onWarn = (err: unknown) =>
      logger.warn({ err, file: path }, "cannot watch the terms file; SIGHUP still reloads");
    try {
      watcher = watch(dirname(path), (_event, changed) => {
        // Some platforms do not say which file changed: then it may be this one.
        if (changed === null || changed === name) {
          // The file must be quiet for settleMs before it is read.
          named = true;
          clearTimeout(debounce);
          debounce = undefined;
        }
        // Other files' changes wait for a check already due: a directory
        // always busy with them must not put the check off for ever.
        debounce ??= setTimeout(() => void check(), settleMs);
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
      closed = true;
      process.off("SIGHUP", onSighup);
      clearTimeout(debounce);
      watcher?.close();
    },
  };
}
