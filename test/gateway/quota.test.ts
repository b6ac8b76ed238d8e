import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { windowAt } from "../../src/services/token/clock.js";
import { createMemoryQuotaStore } from "../../src/services/token/memory-store.js";
import {
  type QuotaStore,
  QuotaStoreUnavailableError,
} from "../../src/services/token/quota-store.js";
import { createInProcessUpstreams, failingLlmBackend } from "../fixtures/upstreams.js";

let app: FastifyInstance;
afterEach(() => app?.close());

async function gateway(options: Parameters<typeof createInProcessUpstreams>[0] = {}) {
  app = await buildGateway({
    config: loadGatewayConfig({}),
    logger: createLogger("gateway", "silent"),
    upstreams: createInProcessUpstreams(options),
  });
  return app;
}

const chat = (userId: string) =>
  app.inject({
    method: "POST",
    url: "/chat",
    headers: { "content-type": "application/json" },
    payload: JSON.stringify({ user_id: userId, text: "hi" }),
  });

const secondsToMidnight = () => (windowAt(new Date()).resetAt.getTime() - Date.now()) / 1000;

/**
 * A test double for a reply lost on the network: the first charge is made,
 * then reported as unavailable, as when Redis ran the script but the answer
 * never came back.
 */
function lostFirstReply(store: QuotaStore): QuotaStore {
  let lost = false;
  return {
    ...store,
    async charge(input) {
      const result = await store.charge(input);
      if (lost) return result;
      lost = true;
      throw new QuotaStoreUnavailableError("reply lost (test double)");
    },
  };
}

describe("gateway quota", () => {
  it("sends RateLimit headers with every 200 and 429 of /chat", async () => {
    await gateway();
    const seen = [];
    for (let i = 0; i < 5; i++) {
      const res = await chat("headers");
      seen.push([
        res.statusCode,
        res.headers["ratelimit-limit"],
        res.headers["ratelimit-remaining"],
      ]);
      const reset = Number(res.headers["ratelimit-reset"]);
      expect(Math.abs(reset - secondsToMidnight())).toBeLessThan(3);
    }
    expect(seen).toEqual([
      [200, "200", "150"],
      [200, "200", "100"],
      [200, "200", "50"],
      [200, "200", "0"],
      [429, "200", "0"],
    ]);
  });

  it("sends no RateLimit headers when the chat failed and its charge was given back", async () => {
    await gateway({ llm: failingLlmBackend });
    const res = await chat("refunded");
    expect(res.statusCode).toBe(500);
    expect(res.headers["ratelimit-remaining"]).toBeUndefined();
    const quota = await app.inject({ method: "GET", url: "/quota?user_id=refunded" });
    expect(quota.json()).toMatchObject({ used: 0, remaining: 200 });
  });

  it("answers GET /quota with the day's use, without charging", async () => {
    await gateway();
    await chat("reader");
    for (let i = 0; i < 2; i++) {
      const res = await app.inject({ method: "GET", url: "/quota?user_id=reader" });
      expect(res.statusCode).toBe(200);
      const body = res.json();
      expect(body).toEqual({
        user_id: "reader",
        used: 50,
        remaining: 150,
        limit: 200,
        reset_at: windowAt(new Date()).resetAt.toISOString(),
      });
      expect(res.headers["x-request-id"]).toBeDefined();
    }
  });

  it("answers a user_id over 256 characters with 400 user_id too long", async () => {
    await gateway();
    const res = await app.inject({ method: "GET", url: `/quota?user_id=${"x".repeat(257)}` });
    expect([res.statusCode, res.json()]).toEqual([400, { error: "user_id too long" }]);
  });

  it.each(["/quota", "/quota?user_id=", "/quota?user_id=a&user_id=b"])(
    "answers %s with 400 user_id is required",
    async (url) => {
      await gateway();
      const res = await app.inject({ method: "GET", url });
      expect([res.statusCode, res.json()]).toEqual([400, { error: "user_id is required" }]);
    },
  );

  it.each(["/quota?user_id=%E9", "/quota?user_id=a%2"])(
    "answers %s with 400: not percent-encoded UTF-8",
    async (url) => {
      await gateway();
      const res = await app.inject({ method: "GET", url });
      expect([res.statusCode, res.json()]).toEqual([
        400,
        { error: "query string is not percent-encoded UTF-8" },
      ]);
    },
  );

  it("reads a percent-encoded user id as UTF-8", async () => {
    await gateway();
    const res = await app.inject({ method: "GET", url: "/quota?user_id=%C3%A9+x" });
    expect(res.statusCode).toBe(200);
    expect(res.json().user_id).toBe("é x");
  });

  it("retries a charge whose reply was lost once, charging it once", async () => {
    const store = createMemoryQuotaStore();
    await gateway({ store: lostFirstReply(store) });
    const res = await chat("retried");
    expect(res.statusCode).toBe(200);
    expect(res.json().remaining).toBe(150);
    expect(await store.get({ userId: "retried", window: windowAt(new Date()) })).toBe(50);
  });

  it("answers 500 token failed when the quota store stays unavailable", async () => {
    const down: QuotaStore = {
      ...createMemoryQuotaStore(),
      async charge() {
        throw new QuotaStoreUnavailableError("down (test double)");
      },
      async get() {
        throw new QuotaStoreUnavailableError("down (test double)");
      },
    };
    await gateway({ store: down });
    const res = await chat("down");
    expect([res.statusCode, res.json()]).toEqual([500, { error: "token failed" }]);
    expect(res.headers["ratelimit-limit"]).toBeUndefined();
    const quota = await app.inject({ method: "GET", url: "/quota?user_id=down" });
    expect([quota.statusCode, quota.json()]).toEqual([500, { error: "token failed" }]);
  });
});
