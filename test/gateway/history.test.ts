import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it, vi } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { parseHistoryQuery } from "../../src/gateway/history.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import type { HistoryStore } from "../../src/services/history/history-store.js";
import {
  createInProcessUpstreams,
  createMemoryHistoryStore,
  failingLlmBackend,
} from "../fixtures/upstreams.js";

let app: FastifyInstance;
let store: HistoryStore;
afterEach(async () => {
  await app?.close();
  await store?.close();
});

async function gateway(options: Parameters<typeof createInProcessUpstreams>[0] = {}) {
  store = options.history ?? createMemoryHistoryStore();
  app = await buildGateway({
    config: loadGatewayConfig({ HISTORY_RETRY_WINDOW_MS: "1000" }),
    logger: createLogger("gateway", "silent"),
    upstreams: createInProcessUpstreams({ ...options, history: store }),
  });
  return app;
}

const chat = (user: string, text: string) =>
  app.inject({ method: "POST", url: "/chat", payload: { user_id: user, text } });
const history = (query: string) => app.inject({ method: "GET", url: `/history${query}` });

describe("gateway GET /history over in-process services", () => {
  it("lists each successful chat newest first: cleaned text, reply, time, id", async () => {
    await gateway();
    const before = Date.now();
    const first = await chat("h1", "Hello   world");
    await chat("h1", "second   one");
    await chat("h1", "this has foo inside");
    await chat("h2", "someone else");
    expect(first.statusCode).toBe(200);
    await vi.waitFor(async () =>
      expect((await history("?user_id=h1")).json().items).toHaveLength(2),
    );
    const res = await history("?user_id=h1");
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body).toEqual({
      items: [
        {
          id: expect.any(String),
          text: "second one",
          reply: "Echo: second one",
          created_at: expect.any(String),
        },
        {
          id: expect.any(String),
          text: "Hello world",
          reply: "Echo: Hello world",
          created_at: expect.any(String),
        },
      ],
      next_page_token: "",
    });
    const at = Date.parse(body.items[1].created_at);
    expect(body.items[1].created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(at).toBeGreaterThanOrEqual(before);
    expect(at).toBeLessThanOrEqual(Date.now());
    // The entry is stored under the chat's request id.
    const [stored] = (await store.list({ userId: "h1", pageSize: 1, pageToken: "" })).entries.slice(
      -1,
    );
    expect(stored?.requestId).not.toBe("");
  });

  it("reads its own writes: a chat or a stream just answered is listed at once", async () => {
    await gateway();
    expect((await chat("ryw", "one")).statusCode).toBe(200);
    expect(
      (await history("?user_id=ryw")).json().items.map((i: { text: string }) => i.text),
    ).toEqual(["one"]);
    const stream = await app.inject({
      method: "POST",
      url: "/chat/stream",
      payload: { user_id: "ryw", text: "two" },
    });
    expect(stream.body).toContain("event: done");
    expect(
      (await history("?user_id=ryw")).json().items.map((i: { text: string }) => i.text),
    ).toEqual(["two", "one"]);
  });

  it("makes a read wait only for its own user's chats, not for another user's slow append", async () => {
    const memory = createMemoryHistoryStore();
    const slow: HistoryStore = {
      ...memory,
      list: (query) => memory.list(query),
      append: async (entry) => {
        await new Promise((r) => setTimeout(r, 1_500));
        return memory.append(entry);
      },
    };
    await gateway({ history: slow });
    expect((await chat("slow-a", "one")).statusCode).toBe(200);
    const started = Date.now();
    const other = await history("?user_id=slow-b");
    expect([other.statusCode, other.json().items]).toEqual([200, []]);
    expect(Date.now() - started).toBeLessThan(700);
    // The user who just chatted still reads the chat.
    expect((await history("?user_id=slow-a")).json().items).toHaveLength(1);
  });

  it("pages with page_size and page_token, ending with an empty token", async () => {
    await gateway();
    for (const n of [1, 2, 3]) await chat("pager", `chat ${n}`);
    await vi.waitFor(async () =>
      expect((await history("?user_id=pager")).json().items).toHaveLength(3),
    );
    const texts: string[] = [];
    let token = "";
    for (let page = 0; page < 5; page++) {
      const res = await history(
        `?user_id=pager&page_size=2&page_token=${encodeURIComponent(token)}`,
      );
      expect(res.statusCode).toBe(200);
      const body = res.json();
      texts.push(...body.items.map((i: { text: string }) => i.text));
      token = body.next_page_token;
      if (token === "") break;
    }
    expect(texts).toEqual(["chat 3", "chat 2", "chat 1"]);
  });

  it("does not keep refused or failed chats", async () => {
    await gateway({ llm: failingLlmBackend });
    expect((await chat("failed", "hi")).statusCode).toBe(500);
    await new Promise((r) => setTimeout(r, 100));
    expect((await history("?user_id=failed")).json()).toEqual({ items: [], next_page_token: "" });
  });

  it.each([
    ["", 400, { error: "user_id is required" }],
    ["?user_id=", 400, { error: "user_id is required" }],
    ["?user_id=a&user_id=b", 400, { error: "user_id is required" }],
    [`?user_id=${"x".repeat(257)}`, 400, { error: "user_id too long" }],
    ["?user_id=u&page_token=garbage", 400, { error: "invalid page_token" }],
    ["?user_id=u&page_size=abc", 400, { error: "invalid page_size" }],
    ["?user_id=u&page_size=-1", 400, { error: "invalid page_size" }],
    ["?user_id=u&page_size=99999999999999999999", 200, { items: [], next_page_token: "" }],
    ["?user_id=%E9", 400, { error: "query string is not percent-encoded UTF-8" }],
    ["?user_id=u%ZZ", 400, { error: "query string is not percent-encoded UTF-8" }],
    ["?user_id=u&page_token=%", 400, { error: "query string is not percent-encoded UTF-8" }],
    ["?user_id=%C3%A9%25E9", 200, { items: [], next_page_token: "" }],
  ])("answers %s with %i", async (query, status, body) => {
    await gateway();
    const res = await history(query);
    expect(res.statusCode).toBe(status);
    expect(res.json()).toEqual(body);
    expect(res.headers["x-request-id"]).toBeDefined();
  });

  it("answers 500 history failed when the history store fails, and chats still succeed", async () => {
    const broken = createMemoryHistoryStore();
    await broken.close();
    await gateway({ history: broken });
    expect((await history("?user_id=u")).statusCode).toBe(500);
    expect((await history("?user_id=u")).json()).toEqual({ error: "history failed" });
    const res = await chat("u", "still answered");
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ reply: "Echo: still answered" });
  });
});

describe("parseHistoryQuery", () => {
  it("defaults page_size to 0 (the service's default) and page_token to empty", () => {
    expect(parseHistoryQuery({ user_id: "u" })).toEqual({
      userId: "u",
      pageSize: 0,
      pageToken: "",
    });
    expect(parseHistoryQuery({ user_id: "u", page_size: "7", page_token: "t" })).toEqual({
      userId: "u",
      pageSize: 7,
      pageToken: "t",
    });
  });
});
