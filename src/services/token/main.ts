import { TokenService } from "../../../gen/chat/v1/token_pb.js";
import { defaultPorts, loadTokenConfig } from "../../lib/config.js";
import { createLogger } from "../../lib/logger.js";
import { createMetricsRegistry } from "../../lib/metrics.js";
import { createRpcServer } from "../../lib/rpc-server.js";
import { serve } from "../../lib/serve.js";
import { createMemoryQuotaStore } from "./memory-store.js";
import { createTokenService } from "./token-service.js";

/** Starts the token (quota) process from the environment. */
export async function main(): Promise<void> {
  const config = loadTokenConfig();
  const logger = createLogger("token", config.logLevel);
  const store = createMemoryQuotaStore();
  const registry = createMetricsRegistry();
  const service = createTokenService({
    store,
    registry,
    limit: config.quotaLimit,
    defaultCost: config.quotaCost,
  });
  const app = await createRpcServer({
    name: "token",
    config,
    logger,
    registry,
    routes: (router) => router.service(TokenService, service),
  });
  app.addHook("onClose", () => store.close());
  logger.info(
    { store: config.quotaStore, limit: config.quotaLimit, cost: config.quotaCost },
    "quota ready",
  );
  await serve(app, { ...config, portEnv: defaultPorts.token.env, logger });
}
