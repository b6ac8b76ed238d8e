import type { FastifyInstance } from "fastify";
import { TokenService } from "../../../gen/chat/v1/token_pb.js";
import { defaultPorts, loadTokenConfig, type TokenConfig } from "../../lib/config.js";
import { createLogger, type Logger } from "../../lib/logger.js";
import { createMetricsRegistry } from "../../lib/metrics.js";
import { redactUrl } from "../../lib/redact-url.js";
import { createRpcServer } from "../../lib/rpc-server.js";
import { serve } from "../../lib/serve.js";
import { createQuotaStoreFromConfig } from "./store-from-config.js";
import { createTokenService } from "./token-service.js";

/** Builds the token (quota) service, not yet listening. */
export async function buildToken(
  config: TokenConfig,
): Promise<{ app: FastifyInstance; logger: Logger }> {
  const logger = createLogger("token", config.logLevel);
  const { store, readyChecks } = await createQuotaStoreFromConfig(config, logger);
  const registry = createMetricsRegistry();
  const service = createTokenService({
    store,
    registry,
    limit: config.quotaLimit,
    defaultCost: config.quotaCost,
    failOpen: config.quotaFailOpen,
    logger,
  });
  const app = await createRpcServer({
    name: "token",
    config,
    logger,
    registry,
    routes: (router) => router.service(TokenService, service),
    readyChecks,
  });
  app.addHook("onClose", () => store.close());
  logger.info(
    {
      store: config.quotaStore,
      ...(config.quotaStore === "redis" ? { redis: redactUrl(config.redisUrl) } : {}),
      limit: config.quotaLimit,
      cost: config.quotaCost,
      failOpen: config.quotaFailOpen,
    },
    "quota ready",
  );
  return { app, logger };
}

/** Starts the token (quota) process from the environment. */
export async function main(): Promise<void> {
  const config = loadTokenConfig();
  const { app, logger } = await buildToken(config);
  await serve(app, { ...config, portEnv: defaultPorts.token.env, logger });
}
