import { execFile } from "node:child_process";
import { promisify } from "node:util";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startAllInOne } from "../fixtures/processes.js";
import { deltasOf, parseSse } from "../fixtures/sse.js";

const run = promisify(execFile);

/** The echo model thinks this long before its first piece: several keep-alive periods. */
const thinkMs = 900;
const keepAliveMs = 200;

type Running = Awaited<ReturnType<typeof startAllInOne>>;
let thinking: Running;
let tooSlow: Running;
beforeAll(async () => {
  [thinking, tooSlow] = await Promise.all([
    startAllInOne({ ECHO_DELAY_MS: String(thinkMs), STREAM_KEEPALIVE_MS: String(keepAliveMs) }),
    // The model's deadline passes while it still thinks, after a keep-alive was sent.
    startAllInOne({
      ECHO_DELAY_MS: "5000",
      LLM_TIMEOUT_MS: String(keepAliveMs * 3),
      STREAM_KEEPALIVE_MS: String(keepAliveMs),
    }),
  ]);
}, 60_000);
afterAll(async () => {
  await Promise.all([thinking?.stop(), tooSlow?.stop()]);
});

/** `curl -sN -X POST <url><path>` with a JSON body; the status comes last. */
async function curl(url: string, path: string, body: unknown) {
  const { stdout } = await run("curl", [
    "-sN",
    "-w",
    "\n%{http_code}",
    "-X",
    "POST",
    `${url}${path}`,
    "-H",
    "Content-Type: application/json",
    "-d",
    JSON.stringify(body),
  ]);
  const lines = stdout.split("\n");
  const status = Number(lines.pop());
  return { body: lines.join("\n"), status };
}

const quotaOf = async (url: string, user: string) =>
  ((await (await fetch(`${url}/quota?user_id=${user}`)).json()) as { used: number }).used;

describe("event streams while the model thinks (STREAM_KEEPALIVE_MS)", () => {
  it("/chat/stream sends keep-alive comments before the first piece, then the events as without them", async () => {
    const { body, status } = await curl(thinking.url, "/chat/stream", {
      user_id: "ka1",
      text: "slow thought",
    });
    expect(status).toBe(200);
    const comments = body.split("\n").filter((line) => line === ": keep-alive");
    // ~900 ms of thinking at one comment each 200 ms; a loaded machine may send fewer.
    expect(comments.length).toBeGreaterThanOrEqual(2);
    expect(body.indexOf(": keep-alive")).toBeLessThan(body.indexOf("event: meta"));
    const events = parseSse(body);
    expect(events.map((e) => e.event)).toEqual(["meta", "delta", "delta", "delta", "done"]);
    expect(deltasOf(events).join("")).toBe("Echo: slow thought");
  });

  it("the OpenAI SDK streams the reply through the comments", async () => {
    const sdk = new OpenAI({ baseURL: `${thinking.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const stream = await sdk.chat.completions.create({
      model: "echo",
      user: "ka2",
      stream: true,
      messages: [{ role: "user", content: "thinking hard" }],
    });
    let reply = "";
    for await (const chunk of stream) reply += chunk.choices[0]?.delta.content ?? "";
    expect(reply).toBe("Echo: thinking hard");
    const raw = await curl(thinking.url, "/v1/chat/completions", {
      model: "echo",
      user: "ka3",
      stream: true,
      messages: [{ role: "user", content: "again" }],
    });
    expect(raw.body.startsWith(": keep-alive\n\n")).toBe(true);
    expect(raw.body.trimEnd().endsWith("data: [DONE]")).toBe(true);
  });

  it("a model failing after a keep-alive ends the stream with the error event, and the charge is given back", async () => {
    const { body, status } = await curl(tooSlow.url, "/chat/stream", {
      user_id: "ka4",
      text: "never answered",
    });
    // The status was sent with the first comment: the failure can only be an event now.
    expect(status).toBe(200);
    expect(body).toContain(": keep-alive");
    expect(parseSse(body)).toEqual([{ event: "error", data: { error: "llm failed" } }]);
    await expect.poll(() => quotaOf(tooSlow.url, "ka4"), { timeout: 5_000 }).toBe(0);
  });
});
