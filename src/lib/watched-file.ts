import { type FSWatcher, realpathSync, statSync, watch } from "node:fs";
import { realpath, stat } from "node:fs/promises";
import { basename, dirname } from "node:path";
import type { Logger } from "./logger.js";

/** A file read again while the process serves. */
export interface WatchedFile {
  /**
   * Reads the file again, at or after the time of the call; on any error the
   * current contents stay.
   */
  reload(): Promise<void>;
  /** Stops watching the file and listening for SIGHUP. */
  close(): void;
}

/** The file `path` leads to, as one string that changes when it does; undefined when there is none. */
export async function fileStamp(path: string | undefined): Promise<string | undefined> {
  if (path === undefined) return undefined;
  try {
    const s = await stat(path, { bigint: true });
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
  } catch {
    return undefined;
  }
}

/** A directory as one string: its path, symlinks resolved, and its inode. */
const dirAt = (real: string, s: { dev: number; ino: number }) => `${real}:${s.dev}:${s.ino}`;

/** How long the file must be quiet before a change is read. */
const settleMs = 100;

/**
 * How often the file is also looked at without an event: some changes reach
 * no watch (below).
 */
const pollMs = 2_000;

export interface WatchedFileOptions {
  /** The stamp (`fileStamp`) of the file as it was read before the watch began. */
  readonly stamp: string | undefined;
  /**
   * Reads the file and takes what it holds; a throw keeps what was taken
   * before, and is logged. `closed` tells a long read to stop.
   */
  readonly read: (closed: () => boolean) => Promise<void>;
  /** The file as log lines name it ("the terms file", "API_KEYS_FILE"). */
  readonly what: string;
  /** The error line of a failed read ("banned terms not reloaded; the previous list stays"). */
  readonly notReloaded: string;
  readonly logger: Logger;
}

/**
 * Calls `read` again on SIGHUP and when the file at `path` changes (only on
 * SIGHUP without a path).
 *
 * Reads run one at a time: one asked for while another runs is done once
 * that one ends (requests in the meantime share it), so the last contents
 * read are always the newest and a slow read of an older file never wins.
 *
 * The watch is on the file's directory, not on the file: editors save by
 * renaming a new file over the old one, and a watch on the file would keep
 * following the old, replaced inode. A change to another name in the
 * directory reloads when the file the path leads to is no longer the one last
 * read: a Kubernetes ConfigMap or Secret volume updates the path's symlink by
 * renaming a symlink (`..data`) it goes through. When the directory itself
 * is reached through such a symlink (a volume's item in a subdirectory:
 * `sub/keys`, `sub` → `..data/sub`), the directory watched is replaced by the
 * update and then deleted: the watch moves to the directory the path leads
 * to now, or it would see the first update and no other.
 *
 * Some changes reach no watch: a path that is a symlink to a file in another
 * directory, the target changed there; a directory symlink replaced while
 * the old directory stays; the directory deleted and made again. So the file
 * is also looked at every `pollMs` (one stat), and read when it is no longer
 * the one last read: a revoked key or banned term is taken within seconds,
 * not at the next SIGHUP.
 */
export function watchFile(path: string | undefined, options: WatchedFileOptions): WatchedFile {
  const { read, what, notReloaded, logger } = options;
  // The file last read (or tried), as the path led to it: undefined when there was none.
  let lastRead = options.stamp;
  let watcher: FSWatcher | undefined;
  let debounce: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let queued: Promise<void> | undefined;
  let closed = false;

  const readOnce = async () => {
    try {
      lastRead = await fileStamp(path);
      await read(() => closed);
    } catch (err) {
      logger.error({ err, file: path }, notReloaded);
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
  let poller: NodeJS.Timeout | undefined;
  if (path !== undefined) {
    const name = basename(path);
    const dir = dirname(path);
    // The directory watched (`dirAt`): a watch follows the directory it
    // began on, not the path to it.
    let watchedDir: string | undefined;
    // Whether an event since the last check named the file itself.
    let named = false;
    const onWarn = (err: unknown) =>
      logger.warn({ err, file: path }, `cannot watch ${what}; SIGHUP still reloads it`);
    const watchDir = (real: string, at: string) => {
      try {
        const next = watch(real, (_event, changed) => {
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
        next.on("error", onWarn);
        watcher?.close();
        watcher = next;
        watchedDir = at;
      } catch (err) {
        onWarn(err);
      }
    };
    // The path's directory now leads elsewhere (its symlink was replaced):
    // the old one is gone or going, so watch the new one.
    const followDir = async () => {
      try {
        const real = await realpath(dir);
        const at = dirAt(real, await stat(real));
        if (!closed && at !== watchedDir) watchDir(real, at);
      } catch {
        // No directory there now: the watch stays until one is.
      }
    };
    const check = async () => {
      debounce = undefined;
      const ours = named;
      named = false;
      await followDir();
      if (ours || (await fileStamp(path)) !== lastRead) await reload();
    };
    let real = dir;
    let at = "";
    try {
      real = realpathSync(dir);
      at = dirAt(real, statSync(real));
    } catch {
      // Watched as given: the watch says why it cannot be.
    }
    watchDir(real, at);
    // A check already due covers this look.
    poller = setInterval(() => {
      if (debounce === undefined) void check();
    }, pollMs);
    poller.unref();
  }
  return {
    reload,
    close() {
      closed = true;
      process.off("SIGHUP", onSighup);
      clearTimeout(debounce);
      clearInterval(poller);
      watcher?.close();
    },
  };
}
