import type { FastifyInstance } from "fastify";
import { defaultPorts, type GatewayConfig, loadGatewayConfig } from "../lib/config.js";
import { createLogger, type Logger } from "../lib/logger.js";
import { createMetricsRegistry } from "../lib/metrics.js";
import type { LocalService } from "../lib/rpc-server.js";
import { serve } from "../lib/serve.js";
import { readUpstreamCa } from "../lib/tls.js";
import { buildGateway } from "./app.js";
import { loadReloadableApiKeys } from "./auth.js";
import { createUpstreams, type UpstreamName } from "./upstreams.js";

/**
 * Builds the HTTP gateway, not yet listening; the services in `local` run in
 * this process and are called there (`chatmesh all`).
 */
export async function buildGatewayProcess(
  config: GatewayConfig,
  local: Partial<Record<UpstreamName, LocalService>> = {},
): Promise<{ app: FastifyInstance; logger: Logger }> {
  const logger = createLogger("gateway", config.logLevel);
  const registry = createMetricsRegistry();
  const ca = await readUpstreamCa(config.upstreamCaFile);
  const { readyChecks, ...upstreams } = createUpstreams(config, registry, ca, local);
  const apiKeys =
    config.apiKeysFile === undefined
      ? undefined
      : await loadReloadableApiKeys(config.apiKeysFile, logger);
  const app = await buildGateway({
    config,
    logger,
    upstreams,
    registry,
    readyChecks,
    ...(apiKeys === undefined ? {} : { apiKeys }),
  });
  if (apiKeys !== undefined) app.addHook("onClose", async () => apiKeys.close());
  const where = (name: UpstreamName, url: string) =>
    local[name] === undefined ? url : "in this process";
  logger.info(
    {
      filter: where("filter", config.filterUrl),
      token: where("token", config.tokenUrl),
      llm: where("llm", config.llmUrl),
      history: where("history", config.historyUrl),
    },
    "upstreams",
  );
  return { app, logger };
}

/** Starts the HTTP gateway from the environment. */
export async function main(): Promise<void> {
  const config = loadGatewayConfig();
  const { app, logger } = await buildGatewayProcess(config);
  await serve(app, { ...config, portEnv: defaultPorts.gateway.env, logger });
}
