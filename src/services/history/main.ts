import { HistoryService } from "../../../gen/chat/v1/history_pb.js";
import { defaultPorts, loadHistoryConfig } from "../../lib/config.js";
import { createLogger } from "../../lib/logger.js";
import { createRpcServer } from "../../lib/rpc-server.js";
import { serve } from "../../lib/serve.js";
import { redactDatabaseUrl } from "./database.js";
import { createHistoryService } from "./history-service.js";
import { openHistoryStore } from "./open-store.js";

/** Starts the history process from the environment: migrates, then listens. */
export async function main(): Promise<void> {
  const config = loadHistoryConfig();
  const logger = createLogger("history", config.logLevel);
  const store = await openHistoryStore(config.database);
  logger.info({ database: redactDatabaseUrl(config.database) }, "history store ready");
  const app = await createRpcServer({
    name: "history",
    config,
    logger,
    routes: (router) => router.service(HistoryService, createHistoryService({ store, logger })),
    readyChecks: { database: () => store.ping() },
  });
  app.addHook("onClose", () => store.close());
  await serve(app, { ...config, portEnv: defaultPorts.history.env, logger });
}
