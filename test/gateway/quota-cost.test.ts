import { describe, expect, it } from "vitest";
import { countInPieces, countTokens } from "../../src/gateway/quota-cost.js";

/** A counter that records what it was given and counts code points. */
function recording() {
  const given: string[] = [];
  const count = (text: string) => {
    given.push(text);
    return [...text].length;
  };
  return { given, count };
}

describe("counting tokens in pieces", () => {
  it("counts text without long runs in one call", () => {
    const { given, count } = recording();
    const text = "Hello world from Go! ".repeat(1_000);
    expect(countInPieces(count, text)).toBe(text.length);
    expect(given).toEqual([text]);
  });

  it("cuts runs of over 64 characters, of non-space or of space, into whole characters", () => {
    const { given, count } = recording();
    const text = `say ${"€".repeat(200)} then${" ".repeat(100)}${"😀".repeat(70)} end`;
    expect(countInPieces(count, text)).toBe([...text].length);
    expect(given.join("")).toBe(text);
    expect(given.map((piece) => [...piece].length)).toEqual([
      4, 64, 64, 64, 8, 5, 64, 36, 64, 6, 4,
    ]);
    // A surrogate pair is never split.
    expect(given.filter((piece) => /\p{Cs}/u.test(piece))).toEqual([]);
  });

  it("counts with o200k_base as the whole text would, within 2 %", async () => {
    const { countTokens: whole } = await import("gpt-tokenizer/encoding/o200k_base");
    const options = { disallowedSpecial: new Set<string>() };
    for (const text of [
      "The quick brown fox jumps over the lazy dog. ".repeat(50),
      "这是一条最小链路测试，我们希望它能够正常工作。".repeat(100),
      `see https://example.com/${"abcdefghij".repeat(40)} and ${"€".repeat(3_000)}`,
    ]) {
      const exact = whole(text, options);
      expect(Math.abs((await countTokens(text)) - exact) / exact).toBeLessThan(0.02);
    }
    // A run the BPE alone would take minutes over (one pre-token of 174,762 characters).
    expect(await countTokens("€".repeat(174_762))).toBe(174_762);
  });
});
