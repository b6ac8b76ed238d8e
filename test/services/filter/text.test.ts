import { describe, expect, it } from "vitest";
import { createTermMatcher, parseTermsFile } from "../../../src/services/filter/terms.js";
import { cleanText, normalizeForMatch } from "../../../src/services/filter/text.js";

describe("cleanText", () => {
  it("trims and folds runs of white space into one space", () => {
    expect(cleanText("Hello   world   from   Go!")).toBe("Hello world from Go!");
    expect(cleanText("  \t a \n\n b \r\n")).toBe("a b");
  });

  it("folds Unicode white space too", () => {
    expect(cleanText("a\u3000\u00a0b\u2003\u2028c\u0085d")).toBe("a b c d");
  });

  it("keeps text without extra space as it is", () => {
    expect(cleanText("这是一条最小链路测试")).toBe("这是一条最小链路测试");
  });

  it("empties text that is all white space", () => {
    expect(cleanText(" \u3000\t\n")).toBe("");
    expect(cleanText(" ")).toBe("");
  });

  it("trims white space only: U+FEFF is a format character, kept", () => {
    expect(cleanText("\ufeffhi ")).toBe("\ufeffhi");
    expect(cleanText(" \ufeff ")).toBe("\ufeff");
  });
});

describe("normalizeForMatch", () => {
  it("folds case, width, compatibility forms and drops invisible characters", () => {
    expect(normalizeForMatch("FOO")).toBe("foo");
    expect(normalizeForMatch("ｆｏｏ")).toBe("foo");
    expect(normalizeForMatch("f\u200Boo")).toBe("foo");
    expect(normalizeForMatch("f\u00ADo\u2060o")).toBe("foo");
    expect(normalizeForMatch("Straße")).toBe("strasse");
  });

  it("leaves the dotless ı as Unicode's case folding does: sık is not sik", () => {
    expect(normalizeForMatch("bu sık olur")).toBe("bu sık olur");
    expect(normalizeForMatch("SIK")).toBe("sik");
    expect(normalizeForMatch("İ")).toBe("i\u0307");
    const matcher = createTermMatcher(["sik"]);
    expect(matcher.matches("bu sık olur")).toBe(false);
    expect(matcher.matches("bu SIK olur")).toBe(true);
  });

  it("drops control characters, ASCII or not, but folds those that are white space", () => {
    for (const control of ["\u0000", "\u0001", "\u001f", "\u007f", "\u0090", "\u009f"]) {
      expect(normalizeForMatch(`f${control}oo`)).toBe("foo");
      expect(normalizeForMatch(`Ｆ${control}oo`)).toBe("foo");
    }
    expect(normalizeForMatch("a\tb\u0085c\u000bd")).toBe("a b c d");
  });
});

describe("createTermMatcher", () => {
  const matcher = createTermMatcher(["foo", "Bad  Word"]);

  it.each([
    "this has foo inside",
    "FOO",
    "ｆｏｏ",
    "f\u200Boo",
    "a bad word here",
    "BAD\u3000WORD",
    "f\u0000oo",
    "x f\u007fo\u0090o",
  ])("blocks %j", (text) => {
    expect(matcher.matches(text)).toBe(true);
  });

  it.each(["Hello world from Go!", "fo o", "badword"])("lets %j through", (text) => {
    expect(matcher.matches(text)).toBe(false);
  });

  it("counts distinct normalised terms", () => {
    expect(createTermMatcher(["foo", "FOO", "ｆｏｏ", "", "bar"]).size).toBe(2);
  });
});

describe("parseTermsFile", () => {
  it("reads one term per line and skips comments and blank lines", () => {
    expect(parseTermsFile("# banned\nfoo\r\n\n  bar baz  \n#x\n")).toEqual(["foo", "bar baz"]);
  });

  it("reads lines ended by a lone CR, as old Mac editors save them", () => {
    expect(parseTermsFile("# banned\rfoo\rbar\r")).toEqual(["foo", "bar"]);
  });

  it("trims each line of any white space, and keeps a last line without its end", () => {
    expect(
      parseTermsFile("\u00a0foo\u3000\r\n\t# c\n\u2028\n\ufeffbar baz\u202f\r\r\nqux"),
    ).toEqual(["foo", "bar baz", "qux"]);
    expect(parseTermsFile("")).toEqual([]);
  });
});
