import { describe, expect, it } from "vitest";
import { buildAutomaton } from "../../../src/services/filter/aho-corasick.js";

describe("buildAutomaton", () => {
  it("finds any term anywhere, including terms inside and overlapping others", () => {
    const a = buildAutomaton(["he", "she", "his", "hers", "xyzzy"]);
    for (const text of ["she", "ahishers", "ushers", "xhex", "..xyzzy", "hers"]) {
      expect(a.test(text), text).toBe(true);
    }
    for (const text of ["", "h", "sh", "hi", "xyzz", "zzyx", "s h e"]) {
      expect(a.test(text), text).toBe(false);
    }
  });

  // Just under the DFA's bound (a state per code unit of the terms): built as a trie, then compiled
  // when shared prefixes leave fewer states.
  const justUnderBound = (terms: string[]) =>
    (1 + terms.join("").length) * (1 + new Set(terms.join("").split("")).size) - 1;
  const builds: [string, (terms: string[]) => number | undefined][] = [
    ["as a DFA", () => undefined],
    ["walking failure links", () => 0],
    ["as a DFA compiled from the trie", justUnderBound],
  ];

  it.each(builds)(
    "follows failure links to a term that is a suffix of a longer partial match, %s",
    (_, limit) => {
      const terms = ["abcd", "bce", "bcx"];
      const a = buildAutomaton(terms, limit(terms));
      expect(a.test("abce")).toBe(true);
      expect(a.test("abcx")).toBe(true);
      expect(a.test("abcf")).toBe(false);
    },
  );

  it.each(builds)("agrees with a naive search on random texts and terms, %s", (_, limit) => {
    let seed = 7;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const word = (len: number) => Array.from({ length: len }, () => "abcé😀"[rand(5)]).join("");
    for (let round = 0; round < 200; round++) {
      const terms = Array.from({ length: 1 + rand(6) }, () => word(1 + rand(4)));
      // A prefix shared, so that the trie has fewer states than its bound.
      terms.push(`${terms[0]}${word(1)}`);
      const a = buildAutomaton(terms, limit(terms));
      for (let k = 0; k < 20; k++) {
        const text = word(rand(30));
        expect(a.test(text), `${JSON.stringify(terms)} in ${JSON.stringify(text)}`).toBe(
          terms.some((t) => text.includes(t)),
        );
      }
    }
  });

  it("matches nothing without terms", () => {
    expect(buildAutomaton([]).test("anything")).toBe(false);
    expect(buildAutomaton([""]).test("anything")).toBe(false);
  });
});
