import { describe, expect, it } from "vitest";
import type { LlmStreamEnd } from "../../../src/services/llm/backend.js";
import { createEchoBackend, splitWords } from "../../../src/services/llm/echo-backend.js";

async function collect(pieces: AsyncIterable<string | LlmStreamEnd>): Promise<string[]> {
  const out: string[] = [];
  for await (const piece of pieces) {
    if (typeof piece !== "string") throw new Error("the echo backend ends with no usage");
    out.push(piece);
  }
  return out;
}

describe("splitWords", () => {
  it.each([
    ["Echo: Hello world from Go!", ["Echo: ", "Hello ", "world ", "from ", "Go!"]],
    ["  leading and  double  ", ["  ", "leading ", "and  ", "double  "]],
    ["one", ["one"]],
    ["line\nbreak\ttab", ["line\n", "break\t", "tab"]],
    ["", []],
  ])("cuts %j into words that join back exactly", (text, words) => {
    expect(splitWords(text)).toEqual(words);
    expect(splitWords(text).join("")).toBe(text);
  });
});

describe("the echo backend's unary reply", () => {
  it("answers at once without reading the call's signal when it has no delay", async () => {
    let reads = 0;
    const call = {
      get signal() {
        reads++;
        return new AbortController().signal;
      },
    };
    const backend = createEchoBackend();
    expect(await backend.generate({ text: "hi", userId: "u1" }, call)).toEqual({
      reply: "Echo: hi",
    });
    expect(reads).toBe(0);
  });

  it("stops waiting its delay when the call's signal aborts", async () => {
    const backend = createEchoBackend({ delayMs: 5_000 });
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort(new Error("gone")), 50);
    await expect(backend.generate({ text: "hi", userId: "u1" }, controller)).rejects.toThrow(
      "gone",
    );
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});

describe("the echo backend's stream", () => {
  it("yields the unary reply in several pieces", async () => {
    const backend = createEchoBackend();
    const request = { text: "Hello world from Go!", userId: "u1" };
    const pieces = await collect(backend.stream(request, new AbortController().signal));
    const { reply } = await backend.generate(request, new AbortController());
    expect(pieces.length).toBeGreaterThan(2);
    expect(pieces.join("")).toBe(reply);
  });

  it("waits the chunk delay before each piece", async () => {
    const backend = createEchoBackend({ chunkDelayMs: 40 });
    const started = Date.now();
    const pieces = await collect(
      backend.stream({ text: "a b c", userId: "u1" }, new AbortController().signal),
    );
    expect(pieces).toEqual(["Echo: ", "a ", "b ", "c"]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(4 * 40 - 10);
  });

  it("stops at once when its signal aborts", async () => {
    const backend = createEchoBackend({ chunkDelayMs: 5_000 });
    const controller = new AbortController();
    const pieces = backend.stream({ text: "a b c", userId: "u1" }, controller.signal);
    const started = Date.now();
    setTimeout(() => controller.abort(new Error("gone")), 50);
    await expect(collect(pieces)).rejects.toThrow("gone");
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});
