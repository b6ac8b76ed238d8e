import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postChat, type Stack, startStack } from "../fixtures/processes.js";
import { deltasOf, parseSse } from "../fixtures/sse.js";

const run = promisify(execFile);
const chunkDelayMs = 100;

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ ECHO_CHUNK_DELAY_MS: String(chunkDelayMs) });
});
afterAll(() => stack?.stopAll());

/** `curl -N -X POST …/chat/stream`, as the README shows it; the status and type come last. */
async function curlStream(body: string) {
  const { stdout } = await run("curl", [
    "-sN",
    "-w",
    "\n%{http_code}\n%{content_type}",
    "-X",
    "POST",
    `${stack.gatewayUrl}/chat/stream`,
    "-H",
    "Content-Type: application/json",
    "-d",
    body,
  ]);
  const lines = stdout.split("\n");
  const type = lines.pop();
  const status = Number(lines.pop());
  return { body: lines.join("\n"), status, type };
}

/** A curl that streams in the background, noting when each event arrived. */
function startCurlStream(body: string) {
  const curl = spawn("curl", [
    "-sN",
    "-D",
    "-",
    "-X",
    "POST",
    `${stack.gatewayUrl}/chat/stream`,
    "-H",
    "Content-Type: application/json",
    "-d",
    body,
  ]);
  let out = "";
  const arrivals: { event: string; at: number }[] = [];
  curl.stdout.on("data", (d: Buffer) => {
    out += d.toString();
    for (const m of d.toString().matchAll(/^event: (\w+)$/gm)) {
      arrivals.push({ event: m[1] as string, at: Date.now() });
    }
  });
  // "close", not "exit": a process can exit before its last output has been read.
  const exited = new Promise<void>((resolve) => curl.once("close", () => resolve()));
  return {
    curl,
    exited,
    arrivals,
    /** The body: what follows the response headers. */
    output: () => out.slice(out.indexOf("\r\n\r\n") + 4),
    requestId: () => /^x-request-id: (\S+)/im.exec(out)?.[1],
  };
}

async function until<T>(what: string, probe: () => T | undefined, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("POST /chat/stream with real processes and curl", () => {
  it("shows meta, several deltas and done; the deltas joined are the reply", async () => {
    const res = await curlStream('{"user_id":"s1","text":"Hello   world   from   Go!"}');
    expect([res.status, res.type]).toEqual([200, "text/event-stream; charset=utf-8"]);
    expect(res.body).toMatch(/^event: meta\ndata: \{.*\}\n\n(event: delta\ndata: \{.*\}\n\n)+/);
    const events = parseSse(res.body);
    expect(events.map((e) => e.event)).toEqual([
      "meta",
      "delta",
      "delta",
      "delta",
      "delta",
      "delta",
      "done",
    ]);
    expect(events[0]?.data).toEqual({ cleaned: "Hello world from Go!", remaining: 150 });
    const done = events.at(-1)?.data as { reply: string };
    expect(done.reply).toBe("Echo: Hello world from Go!");
    expect(deltasOf(events).join("")).toBe(done.reply);
  });

  it("sends each delta as it comes, not all at the end", async () => {
    const stream = startCurlStream('{"user_id":"s2","text":"a b c d e f"}');
    await stream.exited;
    const first = stream.arrivals.find((a) => a.event === "delta")?.at as number;
    const done = stream.arrivals.find((a) => a.event === "done")?.at as number;
    expect(stream.arrivals.filter((a) => a.event === "delta")).toHaveLength(7);
    // Six more pieces follow the first, each after the chunk delay.
    expect(done - first).toBeGreaterThanOrEqual(6 * chunkDelayMs * 0.8);
  });

  it.each([
    [
      "a blocked text",
      { user_id: "s3", text: "this has foo inside" },
      400,
      "text blocked by filter",
    ],
    ["a blank text", { user_id: "s3", text: "   " }, 400, "text is required"],
    ["a missing user_id", { text: "hi" }, 400, "bad json or missing user_id"],
    ["a text too long", { user_id: "s3", text: "x".repeat(8001) }, 400, "text too long"],
  ])("refuses %s before the stream starts, as JSON", async (_label, body, status, error) => {
    expect(await curlStream(JSON.stringify(body))).toEqual({
      status,
      type: "application/json; charset=utf-8",
      body: JSON.stringify({ error }),
    });
  });

  it("answers 429 as JSON once the quota is spent", async () => {
    for (let i = 0; i < 4; i++) {
      expect((await curlStream('{"user_id":"s4","text":"hi"}')).status).toBe(200);
    }
    expect(await curlStream('{"user_id":"s4","text":"hi"}')).toEqual({
      status: 429,
      type: "application/json; charset=utf-8",
      body: '{"error":"quota exceeded","remaining":-50}',
    });
  });

  it("cancels the LLM server's handler within 500 ms of the client leaving, charging once", async () => {
    const llm = stack.procs.get("llm");
    if (llm === undefined) throw new Error("no llm process");
    const words = Array.from({ length: 40 }, (_, i) => `w${i}`).join(" ");
    const stream = startCurlStream(JSON.stringify({ user_id: "s5", text: words }));
    await until("two deltas", () =>
      stream.arrivals.filter((a) => a.event === "delta").length >= 2 ? true : undefined,
    );
    const requestId = await until("x-request-id", stream.requestId);
    /** The llm's "stream cancelled" log line about this request, if printed yet. */
    const cancelled = () =>
      llm
        .output()
        .split("\n")
        .filter((line) => line.startsWith("{") && line.endsWith("}"))
        .map((line) => JSON.parse(line) as Record<string, unknown>)
        .find((entry) => entry.msg === "stream cancelled" && entry.request_id === requestId);
    expect(cancelled()).toBeUndefined();

    const leftAt = Date.now();
    stream.curl.kill("SIGKILL");
    const line = await until("the llm's stream cancelled line", cancelled);
    expect(Date.now() - leftAt).toBeLessThan(500);
    // The gateway cancelled the call (RST_STREAM CANCEL), not merely dropped it.
    expect(line.reason).toMatch(/^\[canceled\]/);
    expect(stream.output()).not.toContain("event: done");

    const gateway = stack.procs.get("gateway");
    await until("the gateway's line", () =>
      gateway?.output().includes('"outcome":"client gone"') ? true : undefined,
    );
    // The stream that went away was charged once, and not refunded.
    const next = await postChat(stack.gatewayUrl, { user_id: "s5", text: "hi" });
    expect(next).toMatchObject({ status: 200, json: { remaining: 100 } });
  });

  it("ends with an error event when the LLM dies mid-stream, and refunds", async () => {
    // 40 words at chunkDelayMs each: the model is killed long before it could finish, even on a loaded machine.
    const words = Array.from({ length: 40 }, (_, i) => `w${i}`).join(" ");
    const stream = startCurlStream(JSON.stringify({ user_id: "s6", text: words }));
    await until("a delta", () =>
      stream.arrivals.some((a) => a.event === "delta") ? true : undefined,
    );
    await stack.procs.get("llm")?.stop("SIGKILL");
    await stream.exited;
    const events = parseSse(stream.output());
    expect(events[0]).toEqual({
      event: "meta",
      data: { cleaned: expect.any(String), remaining: 150 },
    });
    expect(events.at(-1)).toEqual({ event: "error", data: { error: "llm failed" } });
    expect(events.slice(1, -1).every((e) => e.event === "delta")).toBe(true);

    await stack.start("llm");
    const back = await curlStream('{"user_id":"s6","text":"hi"}');
    expect(parseSse(back.body)[0]?.data).toEqual({ cleaned: "hi", remaining: 150 });
  });
});
