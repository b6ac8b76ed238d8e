const whiteSpaceRun = /\p{White_Space}+/gu;
// Default-ignorable code points (zero-width spaces and joiners, soft hyphen,
// variation selectors…) and format characters hide a term without changing
// how it looks.
const invisible = /[\p{Default_Ignorable_Code_Point}\p{Cf}]/gu;
// Anything outside ASCII takes the Unicode passes.
const nonAscii = /[^\p{ASCII}]/u;

/**
 * Trims the text and folds every run of white space (Unicode White_Space,
 * not just ASCII) into one space.
 */
export function cleanText(text: string): string {
  return text.replace(whiteSpaceRun, " ").trim();
}

const foldOnce = (text: string): string =>
  cleanText(
    text
      .replace(invisible, "")
      .normalize("NFKC")
      .toUpperCase()
      .toLowerCase()
      .normalize("NFKC")
      .replace(invisible, ""),
  );

/** Enough rounds for every chain in Unicode (ẞ → ß → ss takes two). */
const maxFoldRounds = 4;

/**
 * The form banned terms are matched on: invisible characters removed, NFKC
 * (full-width and compatibility forms become plain ones), full case folding
 * (upper then lower case, so "ß" and "SS" meet), white space folded — repeated
 * until nothing changes, because one round can make text that folds further
 * ("ẞ" lower-cases to "ß", which folds to "ss"): the form is then the same
 * for a text and for its normalised form.
 */
export function normalizeForMatch(text: string): string {
  // ASCII has no invisible or compatibility characters and folds by lower
  // case alone, in one round: skip the Unicode passes for it.
  if (!nonAscii.test(text)) return cleanText(text.toLowerCase());
  let current = foldOnce(text);
  for (let round = 1; round < maxFoldRounds; round++) {
    const next = foldOnce(current);
    if (next === current) break;
    current = next;
  }
  return current;
}
