import { type Client, Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { FastifyInstance } from "fastify";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { HistoryService } from "../../gen/chat/v1/history_pb.js";
import {
  type ChatRecord,
  createHistoryRecorder,
  type HistoryRecorder,
} from "../../src/gateway/history-recorder.js";
import { loadHistoryConfig } from "../../src/lib/config.js";
import { createFastTransport } from "../../src/lib/fast-transport.js";
import { createFramesTransport } from "../../src/lib/frames-transport.js";
import { createLogger } from "../../src/lib/logger.js";
import { createRpcServer } from "../../src/lib/rpc-server.js";
import { continueTrace } from "../../src/lib/trace.js";
import { createHistoryService } from "../../src/services/history/history-service.js";
import type { HistoryStore } from "../../src/services/history/history-store.js";
import { openHistoryStore } from "../../src/services/history/open-store.js";
import { createSqliteDatabase, type TestDatabase } from "../fixtures/databases.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { freePort } from "../fixtures/processes.js";

/**
 * A real history server (gRPC over HTTP/2 on a real port) that the tests take
 * down and bring back, in front of one SQLite store that outlives it.
 */
let database: TestDatabase;
let store: HistoryStore;
let port: number;
let server: FastifyInstance | undefined;
const logger = createLogger("gateway", "silent");

/** Calls the server answered since it started, by method. */
const served = { append: 0, appendBatch: 0 };
/** Stored entries the server's AppendBatch answers carried back since it started. */
let entriesAnswered = 0;

async function startServer(options: { withoutAppendBatch?: boolean } = {}) {
  const config = loadHistoryConfig({ HISTORY_PORT: String(port) });
  const impl = createHistoryService({ store });
  served.append = 0;
  served.appendBatch = 0;
  entriesAnswered = 0;
  const counted: Partial<typeof impl> = {
    append: (req, ctx) => {
      served.append++;
      return impl.append(req, ctx);
    },
    list: impl.list,
    // An older history service has no AppendBatch: Connect answers UNIMPLEMENTED.
    ...(options.withoutAppendBatch
      ? {}
      : {
          appendBatch: async (req, ctx) => {
            served.appendBatch++;
            const answer = await impl.appendBatch(req, ctx);
            for (const { result } of answer.results ?? []) {
              if (result?.case === "appended" && result.value.entry !== undefined)
                entriesAnswered++;
            }
            return answer;
          },
        }),
  };
  server = await createRpcServer({
    name: "history",
    config,
    logger: createLogger("history", "silent"),
    routes: (router) => router.service(HistoryService, counted),
  });
  await server.listen({ host: "127.0.0.1", port });
}
async function stopServer() {
  await server?.close();
  server = undefined;
}

beforeAll(async () => {
  database = await createSqliteDatabase();
  store = await openHistoryStore(
    loadHistoryConfig({ HISTORY_DATABASE_URL: database.url }).database,
  );
  port = await freePort();
});
afterAll(async () => {
  await stopServer();
  await store?.close();
  await database?.drop();
});

let recorder: HistoryRecorder | undefined;
afterEach(async () => {
  await recorder?.close();
  recorder = undefined;
  await stopServer();
});

function makeRecorder(
  options: {
    retryWindowMs?: number;
    queueLimit?: number;
    initialDelayMs?: number;
    logger?: typeof logger;
    transport?: Transport;
    batchRetryMs?: number;
  } = {},
) {
  recorder = createHistoryRecorder({
    client: createClient(
      HistoryService,
      options.transport ??
        createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}`, defaultTimeoutMs: 1_000 }),
    ),
    logger: options.logger ?? logger,
    retryWindowMs: options.retryWindowMs ?? 30_000,
    queueLimit: options.queueLimit ?? 100,
    initialDelayMs: options.initialDelayMs ?? 50,
    maxDelayMs: Math.max(200, options.initialDelayMs ?? 0),
    ...(options.batchRetryMs === undefined ? {} : { batchRetryMs: options.batchRetryMs }),
  });
  return recorder;
}

let n = 0;
const chat = (userId: string, extra: Partial<ChatRecord> = {}): ChatRecord => ({
  userId,
  text: `text ${++n}`,
  reply: `reply ${n}`,
  createdAt: new Date(Date.UTC(2025, 0, 1) + n),
  requestId: `req-${userId}-${n}`,
  ...extra,
});
const texts = async (userId: string) =>
  (await store.list({ userId, pageSize: 100, pageToken: "" })).entries.map((e) => e.text).reverse();
const settled = (r: HistoryRecorder) =>
  vi.waitFor(() => expect(r.stats().pending).toBe(0), { timeout: 10_000, interval: 20 });

/** A recorder over the test double `client`, its queue two chats long, its log kept. */
function recorderOfTwo(client: Client<typeof HistoryService>, initialDelayMs: number) {
  const memory = createMemoryLogger();
  const r = createHistoryRecorder({
    client,
    logger: memory.logger,
    retryWindowMs: 60_000,
    queueLimit: 2,
    initialDelayMs,
    batchWindowMs: 1,
  });
  recorder = r;
  return { r, memory };
}

describe("the history recorder against a real history server", () => {
  it("appends at once while history is up", async () => {
    await startServer();
    const r = makeRecorder();
    const c = chat("up");
    r.record(c);
    await vi.waitFor(() => expect(r.stats().appended).toBe(1));
    expect(await texts("up")).toEqual([c.text]);
    expect(r.stats()).toMatchObject({ failedAttempts: 0, dropped: 0, pending: 0 });
  });

  it("keeps chats made while history is down and stores each once when it is back", async () => {
    const r = makeRecorder();
    const chats = [chat("outage"), chat("outage"), chat("outage")];
    for (const c of chats) r.record(c);
    await vi.waitFor(() => expect(r.stats().pending).toBe(3));
    await new Promise((res) => setTimeout(res, 500));
    expect(r.stats().failedAttempts).toBeGreaterThan(3);
    await startServer();
    await settled(r);
    expect(await texts("outage")).toEqual(chats.map((c) => c.text));
    expect(r.stats()).toMatchObject({ appended: 3, recovered: 3, dropped: 0 });
    // A retry of a chat that is stored already stores nothing.
    r.record(chats[0] as ChatRecord);
    await vi.waitFor(() => expect(r.stats().appended).toBe(4));
    expect(await texts("outage")).toHaveLength(3);
  });

  it("stores a chat retried after an outage with every field it was recorded with", async () => {
    const r = makeRecorder();
    const c = chat("fields", { text: "héllo 👋", reply: "Echo: héllo 👋" });
    r.record(c);
    await vi.waitFor(() => expect(r.stats().pending).toBe(1));
    await startServer();
    await settled(r);
    const [stored] = (await store.list({ userId: "fields", pageSize: 10, pageToken: "" })).entries;
    expect(stored).toMatchObject({
      userId: "fields",
      text: c.text,
      reply: c.reply,
      createdAtMs: c.createdAt.getTime(),
      requestId: c.requestId,
    });
  });

  it("drops a chat it cannot encode, without throwing, and stores the next", async () => {
    await startServer();
    const r = makeRecorder();
    expect(() => r.record(chat("odd", { createdAt: new Date(Number.NaN) }))).not.toThrow();
    expect(r.stats()).toMatchObject({ dropped: 1, pending: 0 });
    const next = chat("odd");
    r.record(next);
    await vi.waitFor(() => expect(r.stats().appended).toBe(1));
    expect(await texts("odd")).toEqual([next.text]);
  });

  it("logs a lost chat with its trace, request id and user", async () => {
    const memory = createMemoryLogger();
    const r = makeRecorder({ retryWindowMs: 300, logger: memory.logger });
    const traceId = "0af7651916cd43dd8448eb211c80319c";
    const c = chat("lost", {
      trace: continueTrace(`00-${traceId}-b7ad6b7169203331-01`, "req-lost-1"),
      requestId: "req-lost-1",
    });
    r.record(c);
    await vi.waitFor(() => expect(r.stats().dropped).toBe(1), { timeout: 5_000 });
    const lost = memory.lines.find((l) => String(l.msg).startsWith("history entry lost"));
    expect(lost).toMatchObject({
      trace_id: traceId,
      request_id: "req-lost-1",
      requestId: "req-lost-1",
      userId: "lost",
      msg: "history entry lost: not stored within 300 ms",
    });
  });

  it("sends the chats of a moment together, in AppendBatch calls of at most 128", async () => {
    await startServer();
    // A deadline a busy machine's disk cannot miss: a batch timed out would be
    // sent again, and its chats queued past the retry queue's 100.
    const r = makeRecorder({
      transport: createGrpcTransport({
        baseUrl: `http://127.0.0.1:${port}`,
        defaultTimeoutMs: 15_000,
      }),
    });
    const chats = Array.from({ length: 600 }, () => chat("many"));
    for (const c of chats) r.record(c);
    await vi.waitFor(() => expect(r.stats().appended).toBe(600), { timeout: 20_000 });
    const stored: string[] = [];
    let pageToken = "";
    do {
      const page = await store.list({ userId: "many", pageSize: 100, pageToken });
      stored.push(...page.entries.map((e) => e.text));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    expect(stored.reverse()).toEqual(chats.map((c) => c.text));
    expect(served).toEqual({ append: 0, appendBatch: 5 });
    // Only what became of each chat comes back, not 600 stored entries.
    expect(entriesAnswered).toBe(0);
  });

  it("sends its batches over every transport the gateway uses, each chat stored from them", async () => {
    await startServer();
    const baseUrl = `http://127.0.0.1:${port}`;
    const streamTransport = createGrpcTransport({ baseUrl, defaultTimeoutMs: 1_000 });
    const transports = {
      frames: createFramesTransport({ baseUrl, defaultTimeoutMs: 1_000, streamTransport }),
      connect: createFastTransport({ baseUrl, defaultTimeoutMs: 1_000, streamTransport }),
    };
    for (const [name, transport] of Object.entries(transports)) {
      const r = makeRecorder({ transport });
      const chats = Array.from({ length: 130 }, () => chat(`over-${name}`));
      for (const c of chats) r.record(c);
      await vi.waitFor(() => expect(r.stats().appended).toBe(130), { timeout: 10_000 });
      expect(r.stats()).toMatchObject({ failedAttempts: 0, dropped: 0 });
      expect(await texts(`over-${name}`)).toEqual(chats.slice(-100).map((c) => c.text));
      await r.close();
    }
    expect(served).toEqual({ append: 0, appendBatch: 4 });
    expect(entriesAnswered).toBe(0);
  });

  it("keeps each AppendBatch under the service's message limit", async () => {
    await startServer();
    const r = makeRecorder();
    // 20 chats of 60,000 characters: 1.2 MB in one batch, over the 1 MiB limit.
    for (let i = 0; i < 20; i++) {
      r.record(chat("long", { text: "t".repeat(30_000), reply: "r".repeat(30_000) }));
    }
    await vi.waitFor(() => expect(r.stats().appended).toBe(20), { timeout: 10_000 });
    expect(r.stats()).toMatchObject({ failedAttempts: 0, dropped: 0, pending: 0 });
    expect(served.appendBatch).toBeGreaterThan(1);
  });

  it("drops at once a chat over the service's message limit, storing the chats beside it", async () => {
    await startServer();
    const r = makeRecorder();
    const chats = [chat("big"), chat("big"), chat("big", { reply: "r".repeat(1_200_000) })];
    for (const c of chats) r.record(c);
    const after = chat("big");
    r.record(after);
    await settled(r);
    await vi.waitFor(() => expect(r.stats().appended + r.stats().dropped).toBe(4));
    expect(r.stats()).toMatchObject({ appended: 3, dropped: 1, pending: 0 });
    expect(await texts("big")).toEqual([chats[0], chats[1], after].map((c) => c?.text));
  });

  it("appends one by one to a history service without AppendBatch", async () => {
    await startServer({ withoutAppendBatch: true });
    const r = makeRecorder();
    const chats = [chat("old"), chat("old"), chat("old")];
    for (const c of chats) r.record(c);
    await vi.waitFor(() => expect(r.stats().appended).toBe(3));
    r.record(chat("old"));
    await vi.waitFor(() => expect(r.stats().appended).toBe(4));
    expect(await texts("old")).toHaveLength(4);
    expect(served).toEqual({ append: 4, appendBatch: 0 });
    expect(r.stats()).toMatchObject({ failedAttempts: 0, dropped: 0 });
  });

  it("sends a user's chats waiting for a retry when that user's history is read, not at the next backoff", async () => {
    // History down: the chats fail and wait, the next retry 10 s away.
    const r = makeRecorder({ initialDelayMs: 10_000 });
    r.record(chat("waiting"));
    r.record(chat("other"));
    await vi.waitFor(() => expect(r.stats().pending).toBe(2));
    await startServer();
    const readAt = Date.now();
    await r.flush("waiting", 2_000);
    expect(Date.now() - readAt).toBeLessThan(2_000);
    expect(await texts("waiting")).toHaveLength(1);
    // The pass took the whole queue, oldest first.
    expect(r.stats()).toMatchObject({ pending: 0, recovered: 2, dropped: 0 });
    // A user with nothing waiting starts no pass.
    await r.flush("nobody", 2_000);
    expect(served.appendBatch).toBe(1);
  });

  it("tries AppendBatch again batchRetryMs after a history without it, which an upgrade gave it since", async () => {
    await startServer({ withoutAppendBatch: true });
    const r = makeRecorder({ batchRetryMs: 300 });
    for (const c of [chat("upgraded"), chat("upgraded")]) r.record(c);
    await vi.waitFor(() => expect(r.stats().appended).toBe(2));
    expect(served).toEqual({ append: 2, appendBatch: 0 });
    await stopServer();
    await startServer();
    r.record(chat("upgraded"));
    await vi.waitFor(() => expect(r.stats().appended).toBe(3));
    // Within batchRetryMs: still one Append a chat.
    expect(served).toEqual({ append: 1, appendBatch: 0 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const c of [chat("upgraded"), chat("upgraded")]) r.record(c);
    await vi.waitFor(() => expect(r.stats().appended).toBe(5));
    expect(served).toEqual({ append: 1, appendBatch: 1 });
    expect(await texts("upgraded")).toHaveLength(5);
    expect(r.stats()).toMatchObject({ failedAttempts: 0, dropped: 0 });
  });

  it("sends the chats kept through an outage again in AppendBatch calls, each stored within its window", async () => {
    // One Append at a time drained ~140 chats/s here: 2,000 took ~14 s, and
    // those at the queue's end expired before their turn.
    const r = makeRecorder({ queueLimit: 5_000, retryWindowMs: 6_000 });
    for (let i = 0; i < 2_000; i++) r.record(chat("long-outage"));
    await vi.waitFor(() => expect(r.stats().pending).toBe(2_000), { timeout: 5_000 });
    await startServer();
    await settled(r);
    expect(r.stats()).toMatchObject({ recovered: 2_000, dropped: 0 });
    expect(served).toEqual({ append: 0, appendBatch: Math.ceil(2_000 / 128) });
    let stored = 0;
    let pageToken = "";
    do {
      const page = await store.list({ userId: "long-outage", pageSize: 100, pageToken });
      stored += page.entries.length;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    expect(stored).toBe(2_000);
  });

  it("drops a chat whose retry window passed", async () => {
    const r = makeRecorder({ retryWindowMs: 300 });
    r.record(chat("expired"));
    await vi.waitFor(() => expect(r.stats().dropped).toBe(1), { timeout: 5_000 });
    expect(r.stats().pending).toBe(0);
    await startServer();
    await new Promise((res) => setTimeout(res, 300));
    expect(await texts("expired")).toEqual([]);
  });

  it("drops the oldest chats beyond the queue limit", async () => {
    // No retry under way while the chats come in (one being sent again is
    // kept, the next oldest dropped: the test below): the first comes 2 s after.
    const r = makeRecorder({ queueLimit: 2, initialDelayMs: 2_000 });
    const chats = [chat("full"), chat("full"), chat("full"), chat("full")];
    for (const [i, c] of chats.entries()) {
      r.record(c);
      await vi.waitFor(() => expect(r.stats().pending + r.stats().dropped).toBe(i + 1));
    }
    expect(r.stats()).toMatchObject({ pending: 2, dropped: 2 });
    await startServer();
    await settled(r);
    expect(await texts("full")).toEqual(chats.slice(2).map((c) => c.text));
  });

  it("keeps the chat whose retry is under way when the queue overflows, dropping the next oldest", async () => {
    // A test double of the history client: every batch fails (history
    // flapping), and the retry of A hangs until released, then stores it.
    const stored: string[] = [];
    let releaseA: (() => void) | undefined;
    const client = {
      appendBatch: async () => {
        throw new ConnectError("down", Code.Unavailable);
      },
      append: async (entry: { requestId: string }) => {
        if (entry.requestId === "A" && releaseA === undefined) {
          await new Promise<void>((resolve) => {
            releaseA = resolve;
          });
        }
        stored.push(entry.requestId);
        return {};
      },
    } as unknown as Client<typeof HistoryService>;
    const { r, memory } = recorderOfTwo(client, 10);
    r.record(chat("q", { requestId: "A" }));
    await vi.waitFor(() => expect(releaseA).toBeDefined());
    r.record(chat("q", { requestId: "B" }));
    await vi.waitFor(() => expect(r.stats().pending).toBe(2));
    r.record(chat("q", { requestId: "C" }));
    await vi.waitFor(() => expect(r.stats().dropped).toBe(1));
    releaseA?.();
    await settled(r);
    expect(stored.sort()).toEqual(["A", "C"]);
    const lost = memory.lines.filter((l) => String(l.msg).startsWith("history entry lost"));
    expect(lost.map((l) => [l.request_id ?? l.requestId, l.msg])).toEqual([
      ["B", "history entry lost: retry queue full"],
    ]);
    expect(r.stats()).toMatchObject({ appended: 2, dropped: 1, pending: 0 });
  });

  it("drops the oldest, not the newest, when a chat fails while every queued one is being sent again", async () => {
    // A test double: first attempts fail at once; the retry of the queue (an
    // AppendBatch that carries its entries) hangs until released, then fails
    // too, and after that everything is stored.
    const stored: string[] = [];
    let releaseRetry: (() => void) | undefined;
    let down = true;
    const client = {
      appendBatch: async (req: { entries: { requestId: string }[] }) => {
        if (down && req.entries.length > 0 && releaseRetry === undefined) {
          await new Promise<void>((resolve) => {
            releaseRetry = resolve;
          });
          down = false;
          throw new ConnectError("down", Code.Unavailable);
        }
        if (down) throw new ConnectError("down", Code.Unavailable);
        stored.push(...req.entries.map((e) => e.requestId));
        return { results: req.entries.map(() => ({ result: { case: "appended", value: {} } })) };
      },
      append: async (entry: { requestId: string }) => {
        if (down) throw new ConnectError("down", Code.Unavailable);
        stored.push(entry.requestId);
        return {};
      },
    } as unknown as Client<typeof HistoryService>;
    const { r, memory } = recorderOfTwo(client, 50);
    r.record(chat("q2", { requestId: "A" }));
    r.record(chat("q2", { requestId: "B" }));
    await vi.waitFor(() => expect(releaseRetry).toBeDefined());
    r.record(chat("q2", { requestId: "C" }));
    await vi.waitFor(() => expect(r.stats().pending).toBe(3));
    releaseRetry?.();
    await settled(r);
    expect(stored.sort()).toEqual(["B", "C"]);
    const lost = memory.lines.filter((l) => String(l.msg).startsWith("history entry lost"));
    expect(lost.map((l) => [l.requestId, l.msg])).toEqual([
      ["A", "history entry lost: retry queue full"],
    ]);
  });

  it("drops a chat that history refuses, without retrying it", async () => {
    await startServer();
    const r = makeRecorder();
    r.record(chat("owner", { requestId: "shared" }));
    await vi.waitFor(() => expect(r.stats().appended).toBe(1));
    r.record(chat("thief", { requestId: "shared" }));
    await vi.waitFor(() => expect(r.stats().dropped).toBe(1));
    expect(r.stats()).toMatchObject({ failedAttempts: 1, pending: 0 });
    expect(await texts("thief")).toEqual([]);
  });

  it("gives pending chats one last attempt on close", async () => {
    // No retry comes before the close: only the last attempt can store it.
    const r = makeRecorder({ retryWindowMs: 60_000, initialDelayMs: 60_000 });
    const c = chat("closing");
    r.record(c);
    await vi.waitFor(() => expect(r.stats().pending).toBe(1));
    await startServer();
    await r.close();
    expect(await texts("closing")).toEqual([c.text]);
  });

  it("keeps retrying through the close until history is back, before its deadline", async () => {
    const r = makeRecorder({ initialDelayMs: 50 });
    const c = chat("back-in-time");
    r.record(c);
    await vi.waitFor(() => expect(r.stats().pending).toBe(1));
    const closing = r.close(Date.now() + 8_000);
    await new Promise((res) => setTimeout(res, 400));
    await startServer();
    await closing;
    expect(await texts("back-in-time")).toEqual([c.text]);
    expect(r.stats()).toMatchObject({ pending: 0, dropped: 0, recovered: 1 });
  });

  it("drops and logs what is still pending when the close's deadline comes", async () => {
    const r = makeRecorder({ initialDelayMs: 50 });
    r.record(chat("too-late"));
    await vi.waitFor(() => expect(r.stats().pending).toBe(1));
    const started = Date.now();
    await r.close(started + 500);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(r.stats()).toMatchObject({ pending: 0, dropped: 1 });
  });
});
