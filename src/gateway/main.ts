import { defaultPorts, loadGatewayConfig } from "../lib/config.js";
import { createLogger } from "../lib/logger.js";
import { createMetricsRegistry } from "../lib/metrics.js";
import { serve } from "../lib/serve.js";
import { readUpstreamCa } from "../lib/tls.js";
import { buildGateway } from "./app.js";
import { loadApiKeys } from "./auth.js";
import { createUpstreams } from "./upstreams.js";

/** Starts the HTTP gateway from the environment. */
export async function main(): Promise<void> {
  const config = loadGatewayConfig();
  const logger = createLogger("gateway", config.logLevel);
  const registry = createMetricsRegistry();
  const ca = await readUpstreamCa(config.upstreamCaFile);
  const { readyChecks, ...upstreams } = createUpstreams(config, registry, ca);
  const apiKeys =
    config.apiKeysFile === undefined ? undefined : await loadApiKeys(config.apiKeysFile);
  const app = await buildGateway({
    config,
    logger,
    upstreams,
    registry,
    readyChecks,
    ...(apiKeys === undefined ? {} : { apiKeys }),
  });
  logger.info(
    { filter: config.filterUrl, token: config.tokenUrl, llm: config.llmUrl },
    "upstreams",
  );
  await serve(app, { ...config, portEnv: defaultPorts.gateway.env, logger });
}
