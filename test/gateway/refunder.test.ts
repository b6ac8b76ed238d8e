import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it, vi } from "vitest";
import { QuotaNotChargedSchema } from "../../gen/chat/v1/errors_pb.js";
import { TokenService } from "../../gen/chat/v1/token_pb.js";
import { buildGateway } from "../../src/gateway/app.js";
import { createRefunder } from "../../src/gateway/refunder.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { counter, createMetricsRegistry } from "../../src/lib/metrics.js";
import { createMemoryQuotaStore } from "../../src/services/token/memory-store.js";
import { createTokenService } from "../../src/services/token/token-service.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { freePort } from "../fixtures/processes.js";
import { createInProcessUpstreams, failingLlmBackend } from "../fixtures/upstreams.js";

let app: FastifyInstance;
afterEach(() => app?.close());

/**
 * The real token service over a real memory store, wrapped by a test double
 * that fails like a process dying mid-call: `checkAndInc` charges, then
 * answers UNAVAILABLE; `refund` answers UNAVAILABLE its first `refundFailures` times.
 */
function flakyToken(options: { dieAfterCharge: boolean; refundFailures: number }) {
  const real = createTokenService({ store: createMemoryQuotaStore(), limit: 200, defaultCost: 50 });
  let refundFailures = options.refundFailures;
  const transport = createRouterTransport((router) =>
    router.service(TokenService, {
      ...real,
      async checkAndInc(req, ctx) {
        const res = await real.checkAndInc(req, ctx);
        if (options.dieAfterCharge) throw new ConnectError("connection reset", Code.Unavailable);
        return res;
      },
      async refund(req, ctx) {
        if (refundFailures-- > 0) throw new ConnectError("connection refused", Code.Unavailable);
        return real.refund(req, ctx);
      },
    }),
  );
  return createClient(TokenService, transport);
}

/** What a call whose connection could not be opened fails with: it never reached the service. */
const refusedConnection = () =>
  new ConnectError(
    "connect ECONNREFUSED",
    Code.Unavailable,
    undefined,
    undefined,
    Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), {
      code: "ECONNREFUSED",
      syscall: "connect",
    }),
  );

async function gateway(token: ReturnType<typeof flakyToken>, llmFails = false) {
  const registry = createMetricsRegistry();
  app = await buildGateway({
    config: loadGatewayConfig({ TOKEN_TIMEOUT_MS: "50" }),
    logger: createLogger("gateway", "silent"),
    upstreams: {
      ...createInProcessUpstreams(llmFails ? { llm: failingLlmBackend } : {}),
      token,
    },
    registry,
  });
  return registry;
}

const used = async (user: string) =>
  (await app.inject({ method: "GET", url: `/quota?user_id=${user}` })).json().used;

describe("the gateway's refunds keep the quota exact", () => {
  it("gives back a charge made by a token service that died before answering", async () => {
    const token = flakyToken({ dieAfterCharge: true, refundFailures: 0 });
    const registry = await gateway(token);
    const res = await app.inject({
      method: "POST",
      url: "/chat",
      payload: { user_id: "d", text: "hi" },
    });
    expect([res.statusCode, res.json()]).toEqual([500, { error: "token failed" }]);
    // Charged twice under one id (the call and its retry): one charge, given back.
    await vi.waitFor(async () => expect(await used("d")).toBe(0), { timeout: 5_000 });
    expect(await registry.getSingleMetricAsString("chatmesh_refunds_total")).toMatch(
      /chatmesh_refunds_total\{result="retried"\} 1/,
    );
  });

  it("gives it back too when only the retry found the service gone: the first call may have charged", async () => {
    const real = flakyToken({ dieAfterCharge: true, refundFailures: 0 });
    let calls = 0;
    const token: typeof real = {
      ...real,
      checkAndInc: (req, options) => {
        if (++calls > 1) return Promise.reject(refusedConnection());
        return real.checkAndInc(req, options);
      },
    };
    await gateway(token);
    const res = await app.inject({
      method: "POST",
      url: "/chat",
      payload: { user_id: "g", text: "hi" },
    });
    expect([res.statusCode, res.json()]).toEqual([500, { error: "token failed" }]);
    await vi.waitFor(async () => expect(await used("g")).toBe(0), { timeout: 5_000 });
  });

  it("gives it back too when only the retry was refused with nothing charged (QuotaNotCharged): the first call may have charged", async () => {
    const real = flakyToken({ dieAfterCharge: true, refundFailures: 0 });
    let calls = 0;
    const token: typeof real = {
      ...real,
      checkAndInc: (req, options) => {
        if (++calls > 1) {
          return Promise.reject(
            new ConnectError("quota store unavailable", Code.Unavailable, undefined, [
              { desc: QuotaNotChargedSchema, value: {} },
            ]),
          );
        }
        return real.checkAndInc(req, options);
      },
    };
    await gateway(token);
    const res = await app.inject({
      method: "POST",
      url: "/chat",
      payload: { user_id: "nc", text: "hi" },
    });
    expect([res.statusCode, res.json()]).toEqual([500, { error: "token failed" }]);
    await vi.waitFor(async () => expect(await used("nc")).toBe(0), { timeout: 5_000 });
  });

  it("sends no refund for a charge that never reached the token service (connection refused)", async () => {
    // Nothing listens on the port: every call fails to connect.
    const down = createClient(
      TokenService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${await freePort()}` }),
    );
    let refundCalls = 0;
    const token: typeof down = {
      ...down,
      refund: (req, options) => {
        refundCalls++;
        return down.refund(req, options);
      },
    };
    const registry = await gateway(token);
    const res = await app.inject({
      method: "POST",
      url: "/chat",
      payload: { user_id: "n", text: "hi" },
    });
    expect([res.statusCode, res.json()]).toEqual([500, { error: "token failed" }]);
    // A refund of an unknown outcome would be tried 50 ms on (TOKEN_TIMEOUT_MS), then retried.
    await new Promise((r) => setTimeout(r, 500));
    expect(refundCalls).toBe(0);
    await app.close();
    // Nor is a charge that was never made reported as kept.
    expect(await registry.getSingleMetricAsString("chatmesh_refunds_total")).not.toMatch(
      /result="failed"/,
    );
  });

  it("keeps a charge that lands after the gateway gave up on it and refunded it from being made", async () => {
    const store = createMemoryQuotaStore();
    // A token service (or its store) slower than TOKEN_TIMEOUT_MS: the charge lands late.
    const slow: typeof store = {
      ...store,
      charge: async (input) => {
        await new Promise((r) => setTimeout(r, 400));
        return store.charge(input);
      },
    };
    const service = createTokenService({ store: slow, limit: 200, defaultCost: 50 });
    const token = createClient(
      TokenService,
      createRouterTransport((router) => router.service(TokenService, service), {
        transport: { defaultTimeoutMs: 50 },
      }),
    );
    await gateway(token);
    const res = await app.inject({
      method: "POST",
      url: "/chat",
      payload: { user_id: "late", text: "hi" },
    });
    expect([res.statusCode, res.json()]).toEqual([500, { error: "token failed" }]);
    // The refund (50 ms on) comes first; the charge lands 400 ms after it was sent.
    await new Promise((r) => setTimeout(r, 1_000));
    expect(await used("late")).toBe(0);
  });

  it("retries a refund after an LLM failure until the token service answers", async () => {
    const token = flakyToken({ dieAfterCharge: false, refundFailures: 4 });
    await gateway(token, true);
    const res = await app.inject({
      method: "POST",
      url: "/chat",
      payload: { user_id: "r", text: "hi" },
    });
    expect([res.statusCode, res.json()]).toEqual([500, { error: "llm failed" }]);
    await vi.waitFor(async () => expect(await used("r")).toBe(0), {
      timeout: 10_000,
      interval: 100,
    });
  });

  it("makes the refunds still pending when the gateway shuts down", async () => {
    // The refund and its one retry fail: the next attempt is in the background, 250 ms on.
    const token = flakyToken({ dieAfterCharge: false, refundFailures: 3 });
    await gateway(token, true);
    const res = await app.inject({
      method: "POST",
      url: "/chat",
      payload: { user_id: "s", text: "hi" },
    });
    expect(res.statusCode).toBe(500);
    expect(await used("s")).toBe(50);
    await app.close();
    expect(Number((await token.getQuota({ userId: "s" })).used)).toBe(0);
  });

  it("refunds nothing when the quota refused the chat", async () => {
    const token = flakyToken({ dieAfterCharge: false, refundFailures: 0 });
    await gateway(token);
    for (let i = 0; i < 5; i++) {
      await app.inject({ method: "POST", url: "/chat", payload: { user_id: "q", text: "hi" } });
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(await used("q")).toBe(200);
  });
});

describe("the refunder with the token service away", () => {
  it("keeps at most maxPending refunds for later, giving up the next at once, counted and logged", async () => {
    const { logger, lines } = createMemoryLogger();
    const registry = createMetricsRegistry();
    const refunds = counter(registry, "refunds_total", "refunds", ["result"]);
    // A test double of a token service that never answers in time.
    const token = createClient(
      TokenService,
      createRouterTransport((router) =>
        router.service(TokenService, {
          refund: () => new Promise(() => {}),
        }),
      ),
    );
    const refunder = createRefunder({ token, logger, refunds, maxPending: 3, settleMs: 60_000 });
    for (let i = 0; i < 5; i++) refunder.refundIfCharged("away", `charge-${i}`);
    const failed = lines.filter((line) => line.level === 50);
    expect(failed.map((line) => [line.chargeId, line.msg])).toEqual([
      ["charge-3", "refund failed: 3 refunds are pending already; the charge stays"],
      ["charge-4", "refund failed: 3 refunds are pending already; the charge stays"],
    ]);
    expect(await registry.getSingleMetricAsString("refunds_total")).toContain(
      'refunds_total{result="failed"} 2',
    );
    await refunder.close();
    // The three kept were given up at shutdown, not before.
    expect(lines.filter((line) => line.level === 50)).toHaveLength(5);
  });
});
