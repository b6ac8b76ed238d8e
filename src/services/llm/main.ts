import type { FastifyInstance } from "fastify";
import { LLMService } from "../../../gen/chat/v1/llm_pb.js";
import { defaultPorts, type LlmConfig, loadLlmConfig } from "../../lib/config.js";
import { createLogger, type Logger } from "../../lib/logger.js";
import { createMetricsRegistry } from "../../lib/metrics.js";
import { createRpcServer } from "../../lib/rpc-server.js";
import { serve } from "../../lib/serve.js";
import type { LlmBackend } from "./backend.js";
import { createEchoBackend } from "./echo-backend.js";
import { createLlmService } from "./llm-service.js";

/**
 * The backend LLM_BACKEND names. The OpenAI SDK is loaded only for the
 * openai backend: it is about 13 MB of RSS the echo stub does not need.
 */
async function createBackend(config: LlmConfig, logger: Logger): Promise<LlmBackend> {
  if (config.openai !== undefined) {
    const { answerLimit, createOpenAiBackend } = await import("./openai-backend.js");
    return createOpenAiBackend({
      ...config.openai,
      timeoutMs: config.timeoutMs,
      maxAnswerBytes: answerLimit(config.maxReplyBytes),
      logger,
    });
  }
  return createEchoBackend({ delayMs: config.echoDelayMs, chunkDelayMs: config.echoChunkDelayMs });
}

/** A URL fit for logs: a user or password in it is left out. */
function withoutCredentials(url: string): string {
  const shown = new URL(url);
  shown.username = "";
  shown.password = "";
  return shown.toString();
}

/** Builds the LLM service, not yet listening. */
export async function buildLlm(
  config: LlmConfig,
): Promise<{ app: FastifyInstance; logger: Logger }> {
  const logger = createLogger("llm", config.logLevel);
  const backend = await createBackend(config, logger);
  const registry = createMetricsRegistry();
  const app = await createRpcServer({
    name: "llm",
    config,
    logger,
    registry,
    routes: (router) =>
      router.service(
        LLMService,
        createLlmService({
          backend,
          logger,
          maxTokens: config.maxTokens,
          maxReplyBytes: config.maxReplyBytes,
          registry,
        }),
      ),
  });
  logger.info(
    {
      backend: backend.name,
      model: backend.model ?? backend.name,
      ...(config.openai && { base_url: withoutCredentials(config.openai.baseUrl) }),
    },
    "backend ready",
  );
  return { app, logger };
}

/** Starts the LLM process from the environment. */
export async function main(): Promise<void> {
  const config = loadLlmConfig();
  const { app, logger } = await buildLlm(config);
  await serve(app, { ...config, portEnv: defaultPorts.llm.env, logger });
}
