import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it, vi } from "vitest";
import { TokenService } from "../../gen/chat/v1/token_pb.js";
import { buildGateway } from "../../src/gateway/app.js";
import { createUpstreams } from "../../src/gateway/upstreams.js";
import { loadGatewayConfig, loadTokenConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createMetricsRegistry } from "../../src/lib/metrics.js";
import { createRpcServer } from "../../src/lib/rpc-server.js";
import { createMemoryQuotaStore } from "../../src/services/token/memory-store.js";
import {
  type QuotaStore,
  QuotaStoreUnavailableError,
} from "../../src/services/token/quota-store.js";
import { createRedisQuotaStore } from "../../src/services/token/redis-store.js";
import { createTokenService } from "../../src/services/token/token-service.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { freePort } from "../fixtures/processes.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

const tokenTimeoutMs = 200;
const closers: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

/**
 * A real token process's service over `store`, listening on a free port;
 * `refunds` lists the charge ids of the Refund calls it got.
 */
async function startToken(store: QuotaStore) {
  const refunds: string[] = [];
  const service = createTokenService({ store, limit: 200, defaultCost: 50 });
  const app = await createRpcServer({
    name: "token",
    config: loadTokenConfig({}),
    logger: createLogger("token", "silent"),
    routes: (router) =>
      router.service(TokenService, {
        ...service,
        refund(req, ctx) {
          refunds.push(req.chargeId);
          return service.refund(req, ctx);
        },
      }),
  });
  const port = await freePort();
  await app.listen({ host: "127.0.0.1", port });
  closers.push(async () => {
    await app.close();
    await store.close();
  });
  return { url: `http://127.0.0.1:${port}`, refunds };
}

/** The gateway, reaching that token service over `protocol`; what its operator sees. */
async function startGateway(tokenUrl: string, protocol: string) {
  const { logger, lines } = createMemoryLogger();
  const registry = createMetricsRegistry();
  const config = loadGatewayConfig({
    TOKEN_URL: tokenUrl,
    UPSTREAM_PROTOCOL: protocol,
    TOKEN_TIMEOUT_MS: String(tokenTimeoutMs),
    SHUTDOWN_TIMEOUT_MS: "1000",
  });
  const app: FastifyInstance = await buildGateway({
    config,
    logger,
    upstreams: { ...createInProcessUpstreams(), token: createUpstreams(config, registry).token },
    registry,
  });
  closers.push(() => app.close());
  const chat = async () => {
    const res = await app.inject({
      method: "POST",
      url: "/chat",
      payload: { user_id: "u", text: "hi" },
    });
    return { status: res.statusCode, json: res.json(), requestId: res.headers["x-request-id"] };
  };
  const refundsCounted = async () =>
    (await registry.getSingleMetric("chatmesh_refunds_total")?.get())?.values
      .filter((v) => v.value > 0)
      .map((v) => [v.labels.result, v.value]);
  const chargesKept = () => lines.filter((line) => String(line.msg).includes("the charge stays"));
  return { app, chat, refundsCounted, chargesKept };
}

describe.each(["frames", "connect", "grpc"])(
  "a chat the token service refuses while Redis is down, over UPSTREAM_PROTOCOL=%s",
  (protocol) => {
    it("queues no refund when Redis never ran the charge, so none fails and no charge is said to stay", async () => {
      // Nothing listens there: Redis is down from the start.
      const store = createRedisQuotaStore({ url: `redis://127.0.0.1:${await freePort()}` });
      const token = await startToken(store);
      const gateway = await startGateway(token.url, protocol);

      expect(await gateway.chat()).toMatchObject({ status: 500, json: { error: "token failed" } });
      // A refund of an unknown outcome would be tried TOKEN_TIMEOUT_MS on.
      await new Promise((r) => setTimeout(r, 3 * tokenTimeoutMs));
      await gateway.app.close();

      expect(await gateway.refundsCounted()).toEqual([]);
      expect(gateway.chargesKept()).toEqual([]);
      expect(token.refunds).toEqual([]);
    });

    it("still refunds when the charge may have run (a command sent that timed out)", async () => {
      const memory = createMemoryQuotaStore();
      const store: QuotaStore = {
        ...memory,
        charge: () =>
          Promise.reject(new QuotaStoreUnavailableError("command timed out", { mayHaveRun: true })),
      };
      const token = await startToken(store);
      const gateway = await startGateway(token.url, protocol);

      const chat = await gateway.chat();
      expect(chat).toMatchObject({ status: 500, json: { error: "token failed" } });
      await vi.waitFor(() => expect(token.refunds).toEqual([chat.requestId]), { timeout: 5_000 });
    });
  },
);
