import { connect } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { PromptTooLongSchema } from "../../gen/chat/v1/errors_pb.js";
import { buildGateway } from "../../src/gateway/app.js";
import { countTokens } from "../../src/gateway/quota-cost.js";
import type { StreamedChat } from "../../src/gateway/stream.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import type { HistoryStore } from "../../src/services/history/history-store.js";
import type { LlmBackend } from "../../src/services/llm/backend.js";
import { createEchoBackend } from "../../src/services/llm/echo-backend.js";
import { createMemoryQuotaStore } from "../../src/services/token/memory-store.js";
import type { QuotaStore } from "../../src/services/token/quota-store.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { deltasOf, parseSse } from "../fixtures/sse.js";
import {
  breakingLlmBackend,
  createInProcessUpstreams,
  failingLlmBackend,
} from "../fixtures/upstreams.js";

let app: FastifyInstance;
let baseUrl: string;
afterEach(() => app?.close());

async function gateway(
  options: Parameters<typeof createInProcessUpstreams>[0] & {
    onChatDone?: (chat: StreamedChat) => void;
  } = {},
) {
  app = await buildGateway({
    config: loadGatewayConfig({ MAX_TEXT_CHARS: "30", MAX_BODY_BYTES: "1024" }),
    logger: createLogger("gateway", "silent"),
    upstreams: createInProcessUpstreams(options),
    ...(options.onChatDone === undefined ? {} : { onChatDone: options.onChatDone }),
  });
  baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });
}

/** Reads a streamed chat's body until its first delta: the reader, and what came. */
async function readUntilDelta(res: Response) {
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  let seen = "";
  while (!seen.includes("event: delta")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`stream ended before a delta: ${seen}`);
    seen += new TextDecoder().decode(value);
  }
  return { reader, seen };
}

const stream = (payload: unknown, init: RequestInit = {}) =>
  fetch(`${baseUrl}/chat/stream`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof payload === "string" ? payload : JSON.stringify(payload),
    ...init,
  });

describe("gateway POST /chat/stream over in-process services", () => {
  it("sends meta, several deltas and done, the deltas joined being the reply", async () => {
    const done: StreamedChat[] = [];
    await gateway({ onChatDone: (chat) => void done.push(chat) });
    const res = await stream({ user_id: "u1", text: "Hello   world   from   Go!" });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    expect(res.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.headers.get("ratelimit-remaining")).toBe("150");
    const events = parseSse(await res.text());
    expect(events[0]).toEqual({
      event: "meta",
      data: { cleaned: "Hello world from Go!", remaining: 150 },
    });
    expect(events.at(-1)).toEqual({
      event: "done",
      data: { reply: "Echo: Hello world from Go!", remaining: 150 },
    });
    const deltas = deltasOf(events);
    expect(deltas.length).toBeGreaterThan(2);
    expect(events.slice(1, -1).every((e) => e.event === "delta")).toBe(true);
    expect(deltas.join("")).toBe("Echo: Hello world from Go!");
    expect(done).toEqual([
      {
        requestId: res.headers.get("x-request-id"),
        userId: "u1",
        cleaned: "Hello world from Go!",
        reply: "Echo: Hello world from Go!",
        // The request's trace, for history to log the entry in.
        trace: expect.objectContaining({
          traceId: expect.stringMatching(/^[0-9a-f]{32}$/),
          requestId: res.headers.get("x-request-id"),
        }),
      },
    ]);
  });

  it.each([
    ["body not JSON", "{nope", 400, { error: "bad json or missing user_id" }],
    ["user_id missing", { text: "hi" }, 400, { error: "bad json or missing user_id" }],
    ["text missing", { user_id: "u1" }, 400, { error: "text is required" }],
    ["text blank", { user_id: "u1", text: "   " }, 400, { error: "text is required" }],
    ["text too long", { user_id: "u1", text: "x".repeat(31) }, 400, { error: "text too long" }],
    ["text blocked", { user_id: "u1", text: "has foo" }, 400, { error: "text blocked by filter" }],
    ["body too large", { user_id: "u1", text: "x".repeat(2000) }, 413, {}],
  ])("refuses %s before the stream starts, as JSON", async (_case, payload, status, body) => {
    await gateway();
    const res = await stream(payload);
    expect(res.status).toBe(status);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    expect(await res.json()).toMatchObject(body);
  });

  it("refuses a content type other than JSON with 415", async () => {
    await gateway();
    const res = await stream('{"user_id":"u1","text":"hi"}', {
      headers: { "content-type": "text/plain" },
    });
    expect([res.status, await res.json()]).toEqual([
      415,
      { error: "content-type must be application/json" },
    ]);
  });

  it("refuses the fifth stream of the day with 429 and -50", async () => {
    await gateway();
    const remaining = [];
    for (let i = 0; i < 4; i++) {
      const events = parseSse(await (await stream({ user_id: "q", text: "hi" })).text());
      remaining.push((events[0]?.data as { remaining?: number } | undefined)?.remaining);
    }
    expect(remaining).toEqual([150, 100, 50, 0]);
    const res = await stream({ user_id: "q", text: "hi" });
    expect([res.status, await res.json()]).toEqual([
      429,
      { error: "quota exceeded", remaining: -50 },
    ]);
    expect(res.headers.get("ratelimit-remaining")).toBe("0");
  });

  it("answers a prompt over the model's context as /chat does: 400 text too long, counted so", async () => {
    const tooLong = () =>
      new ConnectError("prompt over the context", Code.InvalidArgument, undefined, [
        { desc: PromptTooLongSchema, value: {} },
      ]);
    const llm: LlmBackend = {
      name: "small context (test double)",
      async generate() {
        throw tooLong();
      },
      // biome-ignore lint/correctness/useYield: it refuses before its first piece, as a model server does.
      async *stream() {
        throw tooLong();
      },
    };
    await gateway({ llm });
    const res = await stream({ user_id: "u1", text: "hi" });
    expect([res.status, await res.json()]).toEqual([400, { error: "text too long" }]);
    const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
    expect(metrics).toContain('chatmesh_chats_total{outcome="text_too_long"} 1');
    expect(metrics).not.toContain('outcome="llm_failed"');
  });

  it("ends with an error event when the model breaks mid-stream, and refunds", async () => {
    const done: StreamedChat[] = [];
    await gateway({ llm: breakingLlmBackend, onChatDone: (chat) => void done.push(chat) });
    for (let i = 0; i < 5; i++) {
      const res = await stream({ user_id: "u1", text: "hi" });
      expect(res.status).toBe(200);
      expect(parseSse(await res.text())).toEqual([
        { event: "meta", data: { cleaned: "hi", remaining: 150 } },
        { event: "delta", data: { text: "Echo: " } },
        { event: "delta", data: { text: "half " } },
        { event: "error", data: { error: "llm failed" } },
      ]);
    }
    expect(done).toEqual([]);
  });

  it("answers a model that fails before its first piece as /chat does: 500 llm failed, refunded", async () => {
    const done: StreamedChat[] = [];
    await gateway({ llm: failingLlmBackend, onChatDone: (chat) => void done.push(chat) });
    for (let i = 0; i < 5; i++) {
      const res = await stream({ user_id: "u1", text: "hi" });
      expect(res.headers.get("content-type")).toMatch(/^application\/json/);
      expect([res.status, await res.json()]).toEqual([500, { error: "llm failed" }]);
      expect(res.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
      // The charge was given back: no quota headers of before it.
      expect(res.headers.get("ratelimit-remaining")).toBeNull();
    }
    expect(done).toEqual([]);
    const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
    expect(metrics).toMatch(/^http_requests_total\{[^}]*route="\/chat\/stream",status="500"\} 5$/m);
    expect(metrics).toContain('chatmesh_chats_total{outcome="llm_failed"} 5');
  });

  it("sends one delta even for an empty reply (the contract's one or more)", async () => {
    const echo = createEchoBackend();
    const silent: LlmBackend = {
      ...echo,
      name: "empty replies (test double)",
      async *stream() {
        yield { finishReason: "stop" };
      },
    };
    await gateway({ llm: silent });
    const events = parseSse(await (await stream({ user_id: "e", text: "say nothing" })).text());
    expect(events.map((e) => e.event)).toEqual(["meta", "delta", "done"]);
    expect(events.slice(1)).toEqual([
      { event: "delta", data: { text: "" } },
      { event: "done", data: { reply: "", remaining: 150 } },
    ]);
  });

  it("opens no model call for a client gone while Token ran, and gives its charge back", async () => {
    const store = createMemoryQuotaStore();
    let charging = () => {};
    const charged = new Promise<void>((resolve) => {
      charging = resolve;
    });
    let leave = () => {};
    const left = new Promise<void>((resolve) => {
      leave = resolve;
    });
    // A test double around the real store: the first charge waits until the client has gone.
    const slow: QuotaStore = {
      ...store,
      async charge(input) {
        charging();
        await left;
        return store.charge(input);
      },
    };
    let modelCalls = 0;
    const echo = createEchoBackend();
    const counted: LlmBackend = {
      ...echo,
      name: "echo, counted (test double)",
      stream(request, signal) {
        modelCalls++;
        return echo.stream(request, signal);
      },
    };
    await gateway({ store: slow, llm: counted });
    const body = JSON.stringify({ user_id: "early", text: "hi" });
    const socket = connect(Number(new URL(baseUrl).port), "127.0.0.1");
    socket.write(
      `POST /chat/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
    );
    await charged;
    socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 50));
    leave();

    const metrics = () => fetch(`${baseUrl}/metrics`).then((res) => res.text());
    await expect.poll(metrics).toContain('chatmesh_chats_total{outcome="client_gone"} 1');
    expect(modelCalls).toBe(0);
    const next = parseSse(await (await stream({ user_id: "early", text: "hi" })).text());
    expect(next[0]?.data).toEqual({ cleaned: "hi", remaining: 150 });
    expect(modelCalls).toBe(1);
  });

  it("cancels the model when the client goes away, keeping the one charge", async () => {
    const echo = createEchoBackend({ chunkDelayMs: 100 });
    let aborted: number | undefined;
    const watched: LlmBackend = {
      ...echo,
      name: "echo, watched (test double)",
      stream(request, signal) {
        signal.addEventListener("abort", () => {
          aborted = Date.now();
        });
        return echo.stream(request, signal);
      },
    };
    const done: StreamedChat[] = [];
    await gateway({ llm: watched, onChatDone: (chat) => void done.push(chat) });
    const controller = new AbortController();
    const res = await stream(
      { user_id: "gone", text: "a b c d e f g h i j" },
      { signal: controller.signal },
    );
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let seen = "";
    while (!seen.includes("event: delta")) {
      const { value, done: ended } = await reader.read();
      if (ended) throw new Error(`stream ended before a delta: ${seen}`);
      seen += new TextDecoder().decode(value);
    }
    const cancelledAt = Date.now();
    controller.abort();
    await expect.poll(() => aborted, { timeout: 2_000, interval: 10 }).toBeDefined();
    expect((aborted as number) - cancelledAt).toBeLessThan(500);
    expect(done).toEqual([]);
    const next = parseSse(await (await stream({ user_id: "gone", text: "hi" })).text());
    expect(next[0]?.data).toEqual({ cleaned: "hi", remaining: 100 });
    // Counted as the client left it, beside the one answered.
    const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
    expect(metrics).toMatch(/^http_requests_total\{[^}]*route="\/chat\/stream",status="499"\} 1$/m);
    expect(metrics).toMatch(/^http_requests_total\{[^}]*route="\/chat\/stream",status="200"\} 1$/m);
  });
});

describe("gateway POST /chat/stream to a client that reads too slowly", () => {
  it("cuts it off at the deadline, keeping the charge: the model did not fail", async () => {
    // A model as fast as the client lets it: 64 KB pieces until cancelled.
    const flood: LlmBackend = {
      name: "flood (test double)",
      async generate() {
        return { reply: "x" };
      },
      async *stream(_request, signal) {
        const piece = "x".repeat(65_536);
        while (!signal.aborted) {
          yield piece;
          await new Promise((resolve) => setImmediate(resolve));
        }
      },
    };
    app = await buildGateway({
      config: loadGatewayConfig({ LLM_TIMEOUT_MS: "1000" }),
      logger: createLogger("gateway", "silent"),
      // More than the socket's buffers hold, so the client holds the model back.
      upstreams: createInProcessUpstreams({ llm: flood, maxReplyBytes: 256 * 1024 * 1024 }),
    });
    baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });
    const body = JSON.stringify({ user_id: "slow", text: "hi" });
    const socket = connect(Number(new URL(baseUrl).port), "127.0.0.1");
    socket.write(
      `POST /chat/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
    );
    // Reads nothing for longer than the deadline: the socket's buffers fill up.
    socket.pause();
    // Cut off at the deadline by the gateway itself, though the client reads nothing.
    await expect
      .poll(
        async () =>
          (await (await fetch(`${baseUrl}/metrics`)).text()).match(/client_too_slow"} (\d+)/)?.[1],
        {
          timeout: 5_000,
          interval: 100,
        },
      )
      .toBe("1");
    let head = "";
    let tail = "";
    let received = 0;
    let sawDelta = false;
    let ended = false;
    let closed = false;
    await new Promise<void>((resolve) => {
      socket.on("data", (chunk: Buffer) => {
        const text = chunk.toString("latin1");
        if (head.length < 64) head += text.slice(0, 64);
        const seen = tail + text;
        tail = seen.slice(-4096);
        received += chunk.length;
        sawDelta ||= seen.includes("event: delta");
        // An end of the stream (the connection stays open after one), or
        // far more than the buffers held: no deadline cut it off.
        ended ||= /event: (error|done)/.test(seen);
        if (ended || received > 64 * 1024 * 1024) resolve();
      });
      socket.once("close", () => {
        closed = true;
        resolve();
      });
      socket.resume();
    });
    socket.destroy();
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    expect(sawDelta).toBe(true);
    // Cut off: neither the model's failure nor a whole reply.
    expect(ended).toBe(false);
    expect(closed).toBe(true);
    const quota = (await (await fetch(`${baseUrl}/quota?user_id=slow`)).json()) as { used: number };
    expect(quota.used).toBe(50);
  });
});

describe("gateway POST /chat/stream to a model slower than its deadline", () => {
  it("fails it as the model's failure, giving the charge back, when the client took its pieces at once", async () => {
    const slow: LlmBackend = {
      name: "slow (test double)",
      async generate() {
        return { reply: "x" };
      },
      async *stream(_request, signal) {
        // Many small pieces at once, then nothing past the deadline.
        for (let i = 0; i < 2_000; i++) yield `${i} `;
        await new Promise((resolve) => setTimeout(resolve, 1_500));
        if (!signal.aborted) yield "late";
      },
    };
    app = await buildGateway({
      config: loadGatewayConfig({ LLM_TIMEOUT_MS: "1000" }),
      logger: createLogger("gateway", "silent"),
      upstreams: createInProcessUpstreams({ llm: slow }),
    });
    baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });
    for (const user of ["late-1", "late-2", "late-3"]) {
      const events = parseSse(await (await stream({ user_id: user, text: "hi" })).text());
      expect(events.length).toBe(2_002);
      expect(events.at(-1)).toMatchObject({ event: "error", data: { error: "llm failed" } });
      const quota = (await (await fetch(`${baseUrl}/quota?user_id=${user}`)).json()) as {
        used: number;
      };
      expect(quota.used).toBe(0);
    }
  });
});

describe("gateway POST /chat/stream with QUOTA_COST_MODE=tokens", () => {
  it("ends with done's remaining as /chat's: the settled charge, not meta's reservation", async () => {
    app = await buildGateway({
      config: loadGatewayConfig({ QUOTA_COST_MODE: "tokens" }),
      logger: createLogger("gateway", "silent"),
      upstreams: createInProcessUpstreams(),
    });
    baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });
    const events = parseSse(await (await stream({ user_id: "s", text: "hi" })).text());
    const chat = await fetch(`${baseUrl}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "c", text: "hi" }),
    });
    const { remaining } = (await chat.json()) as { remaining: number };
    const whole = (await countTokens("hi")) + (await countTokens("Echo: hi"));
    expect(remaining).toBe(200 - whole);
    expect(events[0]?.data).toMatchObject({ remaining: 200 - (await countTokens("hi")) - 100 });
    expect(events.at(-1)).toEqual({ event: "done", data: { reply: "Echo: hi", remaining } });
  });

  it("settles a stream the client left to the prompt and the reply it was sent, not the reservation", async () => {
    app = await buildGateway({
      config: loadGatewayConfig({ QUOTA_COST_MODE: "tokens" }),
      logger: createLogger("gateway", "silent"),
      upstreams: createInProcessUpstreams({ llm: createEchoBackend({ chunkDelayMs: 100 }) }),
    });
    baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });
    const text = "a b c d e f g h i j";
    const controller = new AbortController();
    const res = await stream({ user_id: "left", text }, { signal: controller.signal });
    const { seen } = await readUntilDelta(res);
    // Reserved: the prompt's tokens and QUOTA_REPLY_RESERVE (100), of the token service's 200.
    expect(parseSse(seen)[0]?.data).toMatchObject({
      remaining: 200 - (await countTokens(text)) - 100,
    });
    controller.abort();
    const used = async () =>
      ((await (await fetch(`${baseUrl}/quota?user_id=left`)).json()) as { used: number }).used;
    const atLeast = (await countTokens(text)) + (await countTokens("Echo: "));
    const wholeChat = (await countTokens(text)) + (await countTokens(`Echo: ${text}`));
    await expect.poll(used, { timeout: 2_000, interval: 20 }).toBeLessThan(wholeChat);
    expect(await used()).toBeGreaterThanOrEqual(atLeast);
  });
});

describe("gateway POST /chat/stream while the gateway stops", () => {
  it("cancels a reply still running in time to end it with an error event and give the charge back", async () => {
    const upstreams = createInProcessUpstreams({ llm: createEchoBackend({ chunkDelayMs: 100 }) });
    const { logger, lines } = createMemoryLogger();
    const stopped = await buildGateway({
      // The model calls are cancelled 1,500 - 2 × 200 - 250 = 850 ms after closing began.
      config: loadGatewayConfig({ SHUTDOWN_TIMEOUT_MS: "1500", TOKEN_TIMEOUT_MS: "200" }),
      logger,
      upstreams,
    });
    baseUrl = await stopped.listen({ host: "127.0.0.1", port: 0 });
    // Sixty words: six seconds of reply, far past the shutdown's deadline.
    const res = await stream({ user_id: "leaving", text: Array(60).fill("word").join(" ") });
    const { reader, seen: first } = await readUntilDelta(res);
    let seen = first;
    expect((await upstreams.token.getQuota({ userId: "leaving" })).used).toBe(50n);
    const closingAt = Date.now();
    const closed = stopped.close();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += new TextDecoder().decode(value);
    }
    await closed;
    const events = parseSse(seen);
    expect(events.at(-1)).toEqual({ event: "error", data: { error: "llm failed" } });
    expect(events.filter((e) => e.event === "delta").length).toBeLessThan(40);
    expect(Date.now() - closingAt).toBeLessThan(1_500);
    expect((await upstreams.token.getQuota({ userId: "leaving" })).used).toBe(0n);
    expect(lines.filter((line) => String(line.msg).startsWith("shutdown: streamed"))).toEqual([
      expect.objectContaining({ level: 40, streams: 1 }),
    ]);
  });

  it("says nothing of streams cancelled when none runs, however long the close takes", async () => {
    /** A test double: a history database that is down. */
    const down: HistoryStore = {
      append: () => Promise.reject(new Error("database down")),
      list: () => Promise.reject(new Error("database down")),
      ping: () => Promise.reject(new Error("database down")),
      close: async () => {},
    };
    const { logger, lines } = createMemoryLogger();
    const stopped = await buildGateway({
      // Streams would be cancelled 1,500 - 2 × 500 - 250 = 250 ms after closing
      // began; the append is retried for longer (until its next try would
      // pass 1,500 - 100 - 250 = 1,150 ms).
      config: loadGatewayConfig({
        SHUTDOWN_TIMEOUT_MS: "1500",
        TOKEN_TIMEOUT_MS: "500",
        HISTORY_TIMEOUT_MS: "100",
      }),
      logger,
      upstreams: createInProcessUpstreams({ history: down }),
    });
    baseUrl = await stopped.listen({ host: "127.0.0.1", port: 0 });
    const res = await stream({ user_id: "done", text: "short" });
    expect(parseSse(await res.text()).at(-1)?.event).toBe("done");
    const closingAt = Date.now();
    await stopped.close();
    expect(Date.now() - closingAt).toBeGreaterThan(400);
    expect(lines.some((line) => String(line.msg).startsWith("history entry lost"))).toBe(true);
    expect(lines.filter((line) => String(line.msg).startsWith("shutdown: streamed"))).toEqual([]);
  });

  it("does the same for a /v1 stream waiting on the model: an error chunk, the charge back", async () => {
    /** A test double: a model that stalls after its first piece until its call is cancelled. */
    const stalling: LlmBackend = {
      name: "stalling (test double)",
      generate: () => Promise.reject(new Error("not used")),
      async *stream(_request, signal) {
        yield "Echo: ";
        await new Promise((_resolve, reject) =>
          signal.addEventListener("abort", () => reject(signal.reason), { once: true }),
        );
      },
    };
    const upstreams = createInProcessUpstreams({ llm: stalling });
    const stopped = await buildGateway({
      config: loadGatewayConfig({ SHUTDOWN_TIMEOUT_MS: "1500", TOKEN_TIMEOUT_MS: "200" }),
      logger: createLogger("gateway", "silent"),
      upstreams,
    });
    baseUrl = await stopped.listen({ host: "127.0.0.1", port: 0 });
    const post = (url: string, body: unknown) =>
      fetch(`${baseUrl}${url}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const v1 = await post("/v1/chat/completions", {
      model: "echo",
      user: "v1",
      stream: true,
      messages: [{ role: "user", content: "hi" }],
    });
    expect(v1.status).toBe(200);
    const v1Body = v1.text();
    expect((await upstreams.token.getQuota({ userId: "v1" })).used).toBe(50n);
    const closed = stopped.close();
    const chunks = (await v1Body).split("\n\n").filter((frame) => frame !== "");
    expect(JSON.parse(chunks.at(-1)?.replace(/^data: /, "") ?? "")).toMatchObject({
      error: { message: "llm failed", type: "server_error" },
    });
    await closed;
    expect((await upstreams.token.getQuota({ userId: "v1" })).used).toBe(0n);
  });
});

describe("gateway GET /", () => {
  it("serves the chat page, its script and its style", async () => {
    await gateway();
    const page = await fetch(`${baseUrl}/`);
    expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
    const html = await page.text();
    expect(html).toContain('<script type="module" src="/chat.js">');
    const script = await fetch(`${baseUrl}/chat.js`);
    expect([script.status, script.headers.get("content-type")]).toEqual([
      200,
      "text/javascript; charset=utf-8",
    ]);
    expect(await script.text()).toContain("/chat/stream");
    expect((await fetch(`${baseUrl}/chat.css`)).headers.get("content-type")).toBe(
      "text/css; charset=utf-8",
    );
  });
});
