import type { FastifyInstance } from "fastify";
import { FilterService } from "../../../gen/chat/v1/filter_pb.js";
import { defaultPorts, type FilterConfig, loadFilterConfig } from "../../lib/config.js";
import { createLogger, type Logger } from "../../lib/logger.js";
import { createMetricsRegistry } from "../../lib/metrics.js";
import { createRpcServer } from "../../lib/rpc-server.js";
import { serve } from "../../lib/serve.js";
import { createFilterService } from "./filter-service.js";
import { createReloadableMatcher } from "./reloadable.js";

/** Builds the filter service, not yet listening. */
export async function buildFilter(
  config: FilterConfig,
): Promise<{ app: FastifyInstance; logger: Logger }> {
  const logger = createLogger("filter", config.logLevel);
  const registry = createMetricsRegistry();
  const matcher = await createReloadableMatcher(config.termsFile, logger, registry);
  logger.info({ terms: matcher.size, file: config.termsFile ?? null }, "banned terms loaded");
  const app = await createRpcServer({
    name: "filter",
    config,
    logger,
    registry,
    routes: (router) => router.service(FilterService, createFilterService({ matcher, registry })),
  });
  app.addHook("onClose", async () => matcher.close());
  return { app, logger };
}

/** Starts the filter process from the environment. */
export async function main(): Promise<void> {
  const config = loadFilterConfig();
  const { app, logger } = await buildFilter(config);
  await serve(app, { ...config, portEnv: defaultPorts.filter.env, logger });
}
