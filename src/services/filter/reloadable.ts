import type { Registry } from "prom-client";
import type { Logger } from "../../lib/logger.js";
import { counter, registerGaugeRead } from "../../lib/metrics.js";
import { runStepsInSlices } from "../../lib/steps.js";
import { fileStamp, type WatchedFile, watchFile } from "../../lib/watched-file.js";
import { createTermMatcher, loadTerms, type TermMatcher, termMatcherSteps } from "./terms.js";

/** A matcher whose term list can be replaced while the process serves. */
export interface ReloadableMatcher extends TermMatcher, WatchedFile {}

/**
 * The filter's terms from FILTER_TERMS_FILE, reloaded without a restart on
 * SIGHUP and when the file changes (`watchFile`). The new list is built
 * completely before it replaces the old one, so every call sees one whole
 * list; it is built in slices of a few milliseconds, calls being served by
 * the old list between them (20,000 terms took ~150 ms in all here, no slice
 * over 20 ms; 100,000 terms ~2.6 s, the longest slice ~80 ms, likely a
 * rehash of the trie's Map). With a registry, reloads are counted by result
 * (a failed one is otherwise only a log line) and the terms in use shown.
 */
export async function createReloadableMatcher(
  path: string | undefined,
  logger: Logger,
  registry?: Registry,
): Promise<ReloadableMatcher> {
  const stamp = await fileStamp(path);
  let current = createTermMatcher(await loadTerms(path));
  // Such a term would ban nothing: the invisible characters it is made of
  // are taken out of every text before it is compared.
  const warnIgnored = () => {
    if (current.ignored > 0) {
      logger.warn(
        { ignored: current.ignored, file: path ?? null },
        "banned terms of invisible characters only are ignored",
      );
    }
  };
  warnIgnored();
  const reloads =
    registry &&
    counter(
      registry,
      "chatmesh_filter_terms_reloads_total",
      "Reloads of the banned terms, by result (failed: the previous list stays)",
      ["result"],
    );
  if (registry !== undefined) {
    registerGaugeRead(registry, "chatmesh_filter_terms", "Banned terms in use", () => current.size);
  }
  const file = watchFile(path, {
    stamp,
    what: "the terms file",
    notReloaded: "banned terms not reloaded; the previous list stays",
    logger,
    async read(closed) {
      try {
        const terms = await loadTerms(path);
        // A file being written (emptied by `>`, say) is read with nothing in
        // it: taken, it would turn blocking off until the next good read.
        if (terms.length === 0) {
          throw new Error("the file holds no terms; a list with no terms takes a restart");
        }
        const next = await runStepsInSlices(termMatcherSteps(terms), closed);
        if (next === undefined) return;
        // Terms of invisible characters alone are ignored: a list of only
        // such would turn blocking off just the same.
        if (next.size === 0) {
          throw new Error(
            `the file holds no terms once normalised (invisible characters only, in all ${terms.length}); a list with no terms takes a restart`,
          );
        }
        current = next;
      } catch (err) {
        reloads?.inc({ result: "failed" });
        throw err;
      }
      reloads?.inc({ result: "reloaded" });
      logger.info({ terms: current.size, file: path ?? null }, "banned terms reloaded");
      warnIgnored();
    },
  });
  return {
    get size() {
      return current.size;
    },
    get ignored() {
      return current.ignored;
    },
    matches: (text) => current.matches(text),
    reload: file.reload,
    close: file.close,
  };
}
