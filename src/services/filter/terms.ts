import { readFile, stat } from "node:fs/promises";
import { ConfigError } from "../../lib/config.js";
import { runSteps, type Steps } from "../../lib/steps.js";
import { automatonSteps } from "./aho-corasick.js";
import { normalizeForMatch } from "./text.js";

/** The default banned-term list of the contract. */
export const defaultTerms: readonly string[] = ["foo"];

/** Decides whether a cleaned text contains a banned term. */
export interface TermMatcher {
  /** The number of distinct terms. */
  readonly size: number;
  /** Whether `text` contains any term, compared in normalised form. */
  matches(text: string): boolean;
}

/**
 * Builds a matcher over the normalised forms of `terms`: the text is
 * normalised once and scanned once, however many terms there are.
 */
export function createTermMatcher(terms: Iterable<string>): TermMatcher {
  return runSteps(termMatcherSteps(terms));
}

/** `createTermMatcher` in steps, a few hundred terms or about 65,536 cells each. */
export function* termMatcherSteps(terms: Iterable<string>): Steps<TermMatcher> {
  const distinct = new Set<string>();
  let count = 0;
  let chars = 0;
  for (const term of terms) {
    const normalized = normalizeForMatch(term);
    if (normalized.length > 0 && !distinct.has(normalized)) {
      distinct.add(normalized);
      // The matcher is built of the normalised forms, which may be longer
      // than the terms as written (NFKC makes "\ufdfa" 18 characters).
      chars += normalized.length;
      if (chars > maxTermChars) {
        throw new ConfigError(
          `FILTER_TERMS_FILE must hold terms of at most ${maxTermChars} characters in all once normalised (NFKC, case-folded); they come to more`,
        );
      }
    }
    if (++count % 256 === 0) yield;
  }
  const normalized = [...distinct];
  const automaton = yield* automatonSteps(normalized);
  return {
    size: normalized.length,
    matches: (text) => automaton.test(normalizeForMatch(text)),
  };
}

/**
 * Parses a terms file: one term per line (ended by LF, CRLF or a lone CR, as
 * old Mac editors save), `#` starts a comment line.
 */
export function parseTermsFile(content: string): string[] {
  return content
    .split(/\r\n|\n|\r/)
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
}

/**
 * The most terms, and characters of terms in all, a list may hold. The
 * matcher of a list is built beside the one in use, and a large list's costs
 * ~160 MB of heap per million characters of terms (100,000 random terms of
 * 10 letters: +158 MB); 600,000 such terms took the filter past its heap
 * (512 MB) as it reloaded. At these limits the two matchers of a reload fit.
 */
export const maxTerms = 100_000;
export const maxTermChars = 1_048_576;
/** The largest terms file read at all (comments may fill the rest). */
export const maxTermsFileBytes = 64 * 1_048_576;

/** Decodes a terms file strictly: a leading BOM is dropped, bytes that are not UTF-8 throw. */
const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Reads FILTER_TERMS_FILE; a file that cannot be read or is not valid UTF-8
 * is a configuration error (a lenient decode would ban U+FFFD instead).
 */
export async function loadTerms(path: string | undefined): Promise<readonly string[]> {
  if (path === undefined) return defaultTerms;
  let bytes: Buffer;
  try {
    const { size } = await stat(path);
    if (size > maxTermsFileBytes) {
      throw new ConfigError(
        `FILTER_TERMS_FILE must name a file of at most ${maxTermsFileBytes} bytes, got "${path}" (${size} bytes)`,
      );
    }
    bytes = await readFile(path);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const reason = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ConfigError(
      `FILTER_TERMS_FILE must name a readable UTF-8 file, got "${path}" (${reason})`,
    );
  }
  let content: string;
  try {
    content = utf8.decode(bytes);
  } catch {
    throw new ConfigError(
      `FILTER_TERMS_FILE must name a readable UTF-8 file, got "${path}" (not valid UTF-8)`,
    );
  }
  const terms = parseTermsFile(content);
  const chars = terms.reduce((sum, term) => sum + term.length, 0);
  if (terms.length > maxTerms || chars > maxTermChars) {
    throw new ConfigError(
      `FILTER_TERMS_FILE must hold at most ${maxTerms} terms of ${maxTermChars} characters in all, got "${path}" (${terms.length} terms, ${chars} characters)`,
    );
  }
  return terms;
}
