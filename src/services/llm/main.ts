import { LLMService } from "../../../gen/chat/v1/llm_pb.js";
import { defaultPorts, loadLlmConfig } from "../../lib/config.js";
import { createLogger } from "../../lib/logger.js";
import { createRpcServer } from "../../lib/rpc-server.js";
import { serve } from "../../lib/serve.js";
import { createEchoBackend } from "./echo-backend.js";
import { createLlmService } from "./llm-service.js";

/** Starts the LLM process from the environment. */
export async function main(): Promise<void> {
  const config = loadLlmConfig();
  const logger = createLogger("llm", config.logLevel);
  const backend = createEchoBackend({
    delayMs: config.echoDelayMs,
    chunkDelayMs: config.echoChunkDelayMs,
  });
  const app = await createRpcServer({
    name: "llm",
    config,
    logger,
    routes: (router) => router.service(LLMService, createLlmService({ backend, logger })),
  });
  logger.info({ backend: backend.name }, "backend ready");
  await serve(app, { ...config, portEnv: defaultPorts.llm.env, logger });
}
