import { readFile, stat } from "node:fs/promises";
import { ConfigError } from "../../lib/config.js";
import { runSteps, runStepsInSlices, type Steps } from "../../lib/steps.js";
import { automatonSteps } from "./aho-corasick.js";
import { normalizeForMatch } from "./text.js";

/** The default banned-term list of the contract. */
export const defaultTerms: readonly string[] = ["foo"];

/** Decides whether a cleaned text contains a banned term. */
export interface TermMatcher {
  /** The number of distinct terms. */
  readonly size: number;
  /** The terms left out: empty once normalised (invisible characters only). */
  readonly ignored: number;
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
  let ignored = 0;
  for (const term of terms) {
    const normalized = normalizeForMatch(term);
    if (normalized.length === 0) ignored++;
    else if (!distinct.has(normalized)) {
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
    ignored,
    matches: (text) => automaton.test(normalizeForMatch(text)),
  };
}

/**
 * Parses a terms file: one term per line (ended by LF, CRLF or a lone CR, as
 * old Mac editors save), `#` starts a comment line.
 */
export function parseTermsFile(content: string): string[] {
  return runSteps(termsFileSteps(content, Number.POSITIVE_INFINITY)).terms;
}

// What `trim()` takes: JavaScript's white space and line terminators.
const trimmed = /\s/;
const isTrimmed = (content: string, at: number): boolean => {
  const unit = content.charCodeAt(at);
  return unit < 0x80
    ? unit === 0x20 || (unit >= 0x09 && unit <= 0x0d)
    : trimmed.test(content[at] as string);
};

/** The terms of a terms file as it is read: the first `keep` of them, and how many in all. */
interface TermsRead {
  readonly keep: number;
  readonly terms: string[];
  count: number;
  chars: number;
}

/**
 * Reads the lines of `content` from `start` on, at most `lines` of them,
 * into `read`; returns where the next line starts, -1 at the end. Lines are
 * read where they are, and only the terms kept are made into strings.
 */
function readLines(content: string, start: number, lines: number, read: TermsRead): number {
  for (let line = 0; line < lines; line++) {
    let end = start;
    for (; end < content.length; end++) {
      const unit = content.charCodeAt(end);
      if (unit === 0x0a || unit === 0x0d) break;
    }
    let first = start;
    while (first < end && isTrimmed(content, first)) first++;
    let last = end;
    while (last > first && isTrimmed(content, last - 1)) last--;
    if (first < last && content.charCodeAt(first) !== 0x23) {
      read.count++;
      read.chars += last - first;
      if (read.count <= read.keep) read.terms.push(content.slice(first, last));
    }
    if (end === content.length) return -1;
    const crlf = content.charCodeAt(end) === 0x0d && content.charCodeAt(end + 1) === 0x0a;
    start = end + (crlf ? 2 : 1);
  }
  return start;
}

/**
 * `parseTermsFile` keeping only the first `keep` terms, with how many terms
 * and characters of terms the file holds in all, in steps of a few thousand
 * lines: a file within its size of many short lines, split whole, took tens
 * of millions of strings (64 MiB of one-letter lines ran the filter out of
 * its heap) and seconds of a reload with no call served.
 */
function* termsFileSteps(content: string, keep: number): Steps<TermsRead> {
  const read: TermsRead = { keep, terms: [], count: 0, chars: 0 };
  for (let start = readLines(content, 0, 4_096, read); start !== -1; ) {
    yield;
    start = readLines(content, start, 4_096, read);
  }
  return read;
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
  const scanned = await runStepsInSlices(termsFileSteps(content, maxTerms));
  const { terms, count, chars } = scanned as NonNullable<typeof scanned>;
  if (count > maxTerms || chars > maxTermChars) {
    throw new ConfigError(
      `FILTER_TERMS_FILE must hold at most ${maxTerms} terms of ${maxTermChars} characters in all, got "${path}" (${count} terms, ${chars} characters)`,
    );
  }
  return terms;
}
