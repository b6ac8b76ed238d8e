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

/**
 * The form banned terms are matched on: invisible characters removed, NFKC
 * (full-width and compatibility forms become plain ones), full case folding
 * (upper then lower case, so "ß" and "SS" meet), white space folded.
 */
export function normalizeForMatch(text: string): string {
  // ASCII has no invisible or compatibility characters and folds by lower
  // case alone: skip the Unicode passes for it.
  if (!nonAscii.test(text)) return cleanText(text.toLowerCase());
  return cleanText(
    text
      .replace(invisible, "")
      .normalize("NFKC")
      .toUpperCase()
      .toLowerCase()
      .normalize("NFKC")
      .replace(invisible, ""),
  );
}
