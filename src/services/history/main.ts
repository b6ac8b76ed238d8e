import type { FastifyInstance } from "fastify";
import { HistoryService } from "../../../gen/chat/v1/history_pb.js";
import { defaultPorts, type HistoryConfig, loadHistoryConfig } from "../../lib/config.js";
import { createLogger, type Logger } from "../../lib/logger.js";
import { createRpcServer } from "../../lib/rpc-server.js";
import { serve } from "../../lib/serve.js";
import { type OpenDatabaseOptions, redactDatabaseUrl } from "./database.js";
import { createHistoryService } from "./history-service.js";
import { openHistoryStore } from "./open-store.js";

/** Builds the history service, its store migrated, not yet listening. */
export async function buildHistory(
  config: HistoryConfig,
  /** How the database is opened: `chatmesh all` checkpoints SQLite more often. */
  databaseOptions: OpenDatabaseOptions = {},
): Promise<{ app: FastifyInstance; logger: Logger }> {
  const logger = createLogger("history", config.logLevel);
  const store = await openHistoryStore(config.database, databaseOptions);
  logger.info({ database: redactDatabaseUrl(config.database) }, "history store ready");
  const app = await createRpcServer({
    name: "history",
    config,
    logger,
    routes: (router) => router.service(HistoryService, createHistoryService({ store, logger })),
    readyChecks: { database: () => store.ping() },
  });
  app.addHook("onClose", () => store.close());
  return { app, logger };
}

/** Starts the history process from the environment: migrates, then listens. */
export async function main(): Promise<void> {
  const config = loadHistoryConfig();
  const { app, logger } = await buildHistory(config);
  await serve(app, { ...config, portEnv: defaultPorts.history.env, logger });
}
