import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FilterService } from "../../../gen/chat/v1/filter_pb.js";
import { createFilterService } from "../../../src/services/filter/filter-service.js";
import { createTermMatcher } from "../../../src/services/filter/terms.js";
import { cleanText, normalizeForMatch, sigmaRuleHolds } from "../../../src/services/filter/text.js";

/** Property-based tests of the filter: cleaning, normalisation and blocking. */

const numRuns = Number(process.env.FUZZ_RUNS ?? 500);

/** Any text, weighted towards what the filter cares about: space, invisibles, compatibility forms. */
const text = fc.oneof(
  fc.string({ maxLength: 200 }),
  fc.string({ unit: "grapheme", maxLength: 60 }),
  fc.string({ unit: "binary", maxLength: 60 }),
  fc.string({
    unit: fc.constantFrom(
      ..." \t\n\r\u00a0\u1680\u2000\u2028\u2029\u202f\u205f\u3000\u0085\u180e",
      ..."\u200b\u200c\u200d\u2060\ufeff\u00ad\u034f\ufe0f\u200e\u061c",
      ..."\u0000\u0001\u001f\u007f\u0090\u009f",
      ..."ﬀﬁﬃſẞßİıǅǄΣςσ\u0345ᾼ℃№™ⓕ𝐟ｆＯ①½ﾟ゙\u0301\u0308\u0307",
      "a",
      "o",
      "F",
    ),
    maxLength: 80,
  }),
);

/**
 * The definition of the matching form, done on the whole text each round, as
 * the faster `cleanText` and `normalizeForMatch` must give it.
 */
const spaceRun = /\p{White_Space}+/gu;
// biome-ignore lint/complexity/useRegexLiterals: the v flag (set subtraction) is newer than the compile target
const hidden = new RegExp(
  "[\\p{Default_Ignorable_Code_Point}\\p{Cf}[\\p{Cc}--\\p{White_Space}]]",
  "gv",
);
// White space only: JavaScript's trim() also takes U+FEFF, which is not.
const definedClean = (text: string) => text.replace(spaceRun, " ").replace(/^ | $/g, "");
const definedFoldOnce = (text: string) =>
  definedClean(
    text
      .replace(hidden, "")
      .normalize("NFKC")
      // Unicode's case folding leaves the dotless ı alone; upper-casing does not.
      .split("\u0131")
      .map((part) => part.toUpperCase())
      .join("\u0131")
      .toLowerCase()
      .normalize("NFKC")
      .replace(hidden, "")
      // Case folding's sigma: the final form is the same letter.
      .replaceAll("\u03c2", "\u03c3"),
  );
function definedForm(text: string): string {
  let current = definedFoldOnce(text);
  for (let round = 1; round < 4; round++) {
    const next = definedFoldOnce(current);
    if (next === current) break;
    current = next;
  }
  return current;
}

/** Words of ASCII (case-ignorable punctuation included) and of anything, among spaces. */
const mixedText = fc
  .array(
    fc.oneof(
      fc.constant(" "),
      fc.stringMatching(/^[A-Za-z'.:^`]{1,8}$/),
      text,
      fc.constantFrom(
        "Σ",
        "ΑΣ",
        "σ.",
        "ß",
        "ẞ",
        "\u0301",
        "e\u0301",
        // An invisible character between a letter and its mark: they compose once it is taken out.
        "e\u034f\u0301",
        "A\u200d\u030a",
        "İ",
        "ﬁ",
        "\u00a0",
        "\u200b",
        "ｆｏｏ",
      ),
    ),
    { maxLength: 12 },
  )
  .map((pieces) => pieces.join(""));

describe("the matching form", () => {
  it("cleans as the definition does", () => {
    fc.assert(
      fc.property(fc.oneof(text, mixedText), (raw) => {
        expect(cleanText(raw)).toBe(definedClean(raw));
      }),
      { numRuns },
    );
  });

  it("normalises as the definition does, whatever ASCII surrounds the non-ASCII words", () => {
    fc.assert(
      fc.property(fc.oneof(text, mixedText), (raw) => {
        expect(normalizeForMatch(raw)).toBe(definedForm(raw));
      }),
      { numRuns: numRuns * 4 },
    );
    // Final sigma looks at its neighbours, up to a space.
    expect(normalizeForMatch("Ab ΑΣ xy")).toBe("ab ασ xy");
    expect(normalizeForMatch("ΑΣ'a b")).toBe(definedForm("ΑΣ'a b"));
  });
});

/**
 * Words for the code-unit-by-code-unit folding: letters whose fold depends
 * on their neighbours (the sigmas, marks, Hangul jamo, the half-width voiced
 * mark), case-ignorable characters (cased or not) that the final sigma looks
 * past, uncased ones that stop it, and units that fold into several.
 */
const unitWords = fc
  .array(
    fc.oneof(
      fc.constantFrom(
        ..."ΣσςΑαΓγΆάΐΰ",
        ..."'.:\u00b7\u2019\u02b0\u02c6\u1d43\u0345\u00ad\u200b\u0301\u0308",
        ..."ßẞİıǅﬁﬀｆＡ①½㎏™",
        ..."1中ー가\u1100\u1161\u11a8ㄱㅏｶﾞ\u00a0\u3000\u2028",
        ..."ПпЁёå",
      ),
      fc.constantFrom(" ", "a", "A"),
    ),
    { maxLength: 16 },
  )
  .map((units) => units.join(""));

describe("folding unit by unit", () => {
  it("gives the definition's form, sigmas and composing neighbours included", () => {
    fc.assert(
      fc.property(unitWords, (raw) => {
        expect(normalizeForMatch(raw)).toBe(definedForm(raw));
      }),
      { numRuns: numRuns * 4 },
    );
    expect(normalizeForMatch("ΟΔΟΣ ΟΔΟΣ'. ΣΑ Α'Σ'")).toBe("οδοσ οδοσ'. σα α'σ'");
    // A term ending in sigma is found inside a longer word, as "foo" is in "fooa".
    for (const text of ["μαλάκαςx", "ΜΑΛΆΚΑΣA", "xμαλάκας", "ΜΑΛΆΚΑΣ"]) {
      expect(normalizeForMatch(text)).toContain(normalizeForMatch("μαλάκας"));
    }
    expect(normalizeForMatch("ｶﾞ ㄱㅏ")).toBe("ガ 가");
  });

  it("finds this runtime deciding the final sigma as the fast path has it (else sigmas take whole rounds)", () => {
    expect(sigmaRuleHolds()).toBe(true);
  });

  it("gives the definition's form for a text longer than its buffer, and for one after it", () => {
    const long = Array.from(
      { length: 20_000 },
      (_, i) => ["Straße", "ΟΔΟΣ", "这是", "ｆｕｌｌ"][i % 4],
    ).join(" ");
    expect(long.length).toBeGreaterThan(65_536);
    expect(normalizeForMatch(long)).toBe(definedForm(long));
    expect(normalizeForMatch("Привет ΟΔΟΣ")).toBe("привет οδοσ");
  });

  it("gives the definition's form for every BMP code unit, alone and among neighbours", {
    timeout: 120_000,
  }, () => {
    const wrong: string[] = [];
    for (let unit = 0; unit < 0x10000; unit++) {
      if (unit >= 0xd800 && unit <= 0xdfff) continue;
      const u = String.fromCharCode(unit);
      for (const raw of [
        u,
        `a${u}\u0301`,
        `\u1100${u}\u1161`,
        `ｶ${u}ﾞ`,
        `αΣ${u}`,
        `α${u}Σ`,
        `Σ${u}α`,
        `${u}ß${u}`,
      ]) {
        if (normalizeForMatch(raw) !== definedForm(raw)) wrong.push(raw);
      }
    }
    expect(wrong).toEqual([]);
  });

  it("relies on what holds in Unicode: outside the marks, every character is a starter, and only Hangul jamo compose onto one", {
    timeout: 120_000,
  }, () => {
    const mark = /\p{M}/u;
    const secondParts = new Set<number>();
    const nonStarters: number[] = [];
    for (let cp = 0; cp <= 0x10ffff; cp++) {
      if (cp >= 0xd800 && cp <= 0xdfff) continue;
      const char = String.fromCodePoint(cp);
      const parts = [...char.normalize("NFD")];
      for (const part of parts.slice(1)) secondParts.add(part.codePointAt(0) as number);
      // A character of combining class 1–239 goes before the iota subscript's 240.
      if (!mark.test(char) && !`\u0345${char}`.normalize("NFD").startsWith("\u0345")) {
        nonStarters.push(cp);
      }
    }
    const unmarked = [...secondParts].filter(
      (cp) => cp <= 0xffff && !mark.test(String.fromCodePoint(cp)),
    );
    expect(unmarked.length).toBeGreaterThan(0);
    for (const cp of unmarked) {
      expect((cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11a8 && cp <= 0x11c2)).toBe(true);
    }
    expect(nonStarters).toEqual([]);
  });
});

describe("cleanText", () => {
  it("never grows the text, is idempotent, and leaves no space to fold", () => {
    fc.assert(
      fc.property(text, (raw) => {
        const cleaned = cleanText(raw);
        expect(cleaned.length).toBeLessThanOrEqual(raw.length);
        expect(cleanText(cleaned)).toBe(cleaned);
        expect(cleaned).not.toMatch(/^\p{White_Space}|\p{White_Space}$|\p{White_Space}{2}/u);
      }),
      { numRuns },
    );
  });
});

describe("normalizeForMatch", () => {
  it("folds the capital sharp s all the way, so it cannot hide a term (found by fuzzing)", () => {
    expect(normalizeForMatch("\u1e9e")).toBe("ss");
    expect(createTermMatcher(["straße"]).matches("STRA\u1e9eE")).toBe(true);
    expect(createTermMatcher(["strasse"]).matches("Stra\u1e9ee")).toBe(true);
  });

  it("is idempotent on every code point", { timeout: 120_000 }, () => {
    const unstable: string[] = [];
    for (let cp = 0; cp <= 0x10ffff; cp++) {
      if (cp >= 0xd800 && cp <= 0xdfff) continue;
      const once = normalizeForMatch(String.fromCodePoint(cp));
      if (normalizeForMatch(once) !== once) unstable.push(cp.toString(16));
    }
    expect(unstable).toEqual([]);
  });

  it("is idempotent", () => {
    fc.assert(
      fc.property(text, (raw) => {
        const once = normalizeForMatch(raw);
        expect(normalizeForMatch(once)).toBe(once);
      }),
      { numRuns },
    );
  });
});

const zeroWidth = [
  "\u200b",
  "\u200c",
  "\u200d",
  "\u2060",
  "\ufeff",
  "\u00ad",
  "\u034f",
  "\ufe0f",
  "\u200e",
  "\u180e",
  "\u{e0020}",
];

/** One letter a–z as a reader would still read it. */
function disguisedLetter(letter: string) {
  const offset = letter.charCodeAt(0) - 0x61;
  return fc.constantFrom(
    letter,
    letter.toUpperCase(),
    String.fromCodePoint(0xff41 + offset), // full width
    String.fromCodePoint(0xff21 + offset), // full width capital
    String.fromCodePoint(0x1d41a + offset), // mathematical bold
    String.fromCodePoint(0x1d400 + offset), // mathematical bold capital
    String.fromCodePoint(0x24d0 + offset), // circled
    String.fromCodePoint(0x1d5ba + offset), // mathematical sans-serif
  );
}

/** A banned term written so that it looks the same, with invisibles between its letters. */
const disguised = (term: string) =>
  fc
    .tuple(
      ...[...term].map((letter) =>
        fc.tuple(
          disguisedLetter(letter),
          fc.array(fc.constantFrom(...zeroWidth), { maxLength: 2 }),
        ),
      ),
    )
    .map((parts) => parts.map(([letter, hidden]) => letter + hidden.join("")).join(""));

const term = fc.stringMatching(/^[a-z]{2,10}$/);
/** Text around the term; it ends or starts at a space, so it never merges with the term's letters. */
const around = fc.string({ maxLength: 30 });

describe("a banned term in disguise", () => {
  it("is always caught: width, case, zero-width and compatibility characters", () => {
    fc.assert(
      fc.property(
        term.chain((t) => fc.tuple(fc.constant(t), disguised(t), around, around)),
        ([banned, hidden, before, after]) => {
          const matcher = createTermMatcher([banned]);
          expect(matcher.matches(cleanText(`${before} ${hidden} ${after}`))).toBe(true);
          expect(matcher.matches(cleanText(hidden))).toBe(true);
        },
      ),
      { numRuns },
    );
  });

  it("is refused by the FilterService as INVALID_ARGUMENT, and a passed text never holds one", async () => {
    const client = createClient(
      FilterService,
      createRouterTransport((router) =>
        router.service(FilterService, createFilterService({ matcher: createTermMatcher(["foo"]) })),
      ),
    );
    const matcher = createTermMatcher(["foo"]);
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          disguised("foo").chain((h) => around.map((a) => `${a} ${h}`)),
          text,
        ),
        async (raw) => {
          try {
            const { cleaned } = await client.filter({ text: raw });
            expect(cleaned.length).toBeLessThanOrEqual(raw.length);
            expect(matcher.matches(cleaned)).toBe(false);
            expect(normalizeForMatch(raw)).not.toContain("foo");
          } catch (err) {
            expect(ConnectError.from(err).code).toBe(Code.InvalidArgument);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});
