import type { FastifyError, FastifyInstance } from "fastify";
import type { Logger } from "../../lib/logger.js";
import type { LabeledCounter as Counter } from "../../lib/metrics.js";
import { type TraceContext, traceCallOptions, traceLogFields } from "../../lib/trace.js";
import type { HistoryRecorder } from "../history-recorder.js";
import type { CostPolicy } from "../quota-cost.js";
import type { Refunder } from "../refunder.js";
import type { OnChatDone } from "../stream.js";
import type { Upstreams } from "../upstreams.js";
import { handleChatCompletion, sendOpenAiError } from "./chat-completions.js";
import { modelObject } from "./completions.js";
import { gatewayErrorIn, openAiErrorFrom, openAiErrorFromFastify, outcomeOf } from "./errors.js";

export interface OpenAiApiDeps {
  readonly upstreams: Upstreams;
  readonly logger: Logger;
  readonly maxTextChars: number;
  /** Counts chats by outcome, with /chat's. */
  readonly chats?: Counter<"outcome"> | undefined;
  readonly refunds?: Counter<"result"> | undefined;
  /** Keeps each answered (non-streamed) chat. */
  readonly history?: HistoryRecorder | undefined;
  /** Keeps each streamed chat that reached its end. */
  readonly onChatDone?: OnChatDone | undefined;
  readonly cost?: CostPolicy | undefined;
  /** Gives charges back, retrying in the background. */
  readonly refunder?: Refunder | undefined;
  /** Aborted when the gateway stops: model calls still running fail, their charges given back. */
  readonly stopping?: AbortSignal | undefined;
  /** LLM_TIMEOUT_MS: a streamed reply's deadline (see ChatDeps.llmTimeoutMs). */
  readonly llmTimeoutMs?: number | undefined;
  /** STREAM_KEEPALIVE_MS: a comment line after this long without a frame (openSseStream). */
  readonly keepAliveMs?: number | undefined;
}

const llmFailed = openAiErrorFrom({ status: 500, body: { error: "llm failed" } });

/**
 * Adds the OpenAI-compatible API under /v1, so OpenAI SDKs and tools work
 * with `baseURL` = the gateway's /v1: POST /v1/chat/completions, GET
 * /v1/models (the LLM service's model) and GET /v1/models/{id}. Every error
 * under /v1 is OpenAI's error JSON, including those of Fastify (body too
 * large, not JSON) and of hooks shared with the rest of the gateway (an API
 * key check, a rate limit), rewritten from the gateway's `{"error": …}`.
 */
export async function registerOpenAiApi(app: FastifyInstance, deps: OpenAiApiDeps): Promise<void> {
  const { upstreams } = deps;
  const count = (outcome: string) => deps.chats?.inc({ outcome: outcome.replaceAll(" ", "_") });
  const completionsDeps = {
    upstreams,
    logger: deps.logger,
    maxTextChars: deps.maxTextChars,
    count,
    onChatDone: deps.onChatDone,
    ...(deps.refunds && { refunds: deps.refunds }),
    ...(deps.history && { history: deps.history }),
    ...(deps.cost && { cost: deps.cost }),
    ...(deps.refunder && { refunder: deps.refunder }),
    ...(deps.stopping && { stopping: deps.stopping }),
    ...(deps.llmTimeoutMs !== undefined && { llmTimeoutMs: deps.llmTimeoutMs }),
    ...(deps.keepAliveMs !== undefined && { keepAliveMs: deps.keepAliveMs }),
  };

  await app.register(
    async (v1) => {
      v1.setErrorHandler((err: FastifyError, req, reply) => {
        const openAi = openAiErrorFromFastify(err);
        if (openAi.status === 500) {
          req.log.error({ ...traceLogFields(req.trace), err }, "unhandled error");
        }
        // A chat refused before its handler ran (bad JSON, too large) counts as one.
        if (req.routeOptions.url === "/v1/chat/completions") count(outcomeOf(openAi));
        return sendOpenAiError(reply, openAi);
      });
      v1.setNotFoundHandler((req, reply) =>
        reply.code(404).send({
          error: {
            message: `Unknown request URL: ${req.method} ${req.url.split("?")[0]}`,
            type: "invalid_request_error",
            param: null,
            code: "unknown_url",
          },
        }),
      );
      v1.addHook("onSend", async (_req, reply, payload) => {
        if (reply.statusCode < 400) return payload;
        const err = gatewayErrorIn(payload, reply.statusCode);
        return err === undefined ? payload : JSON.stringify(openAiErrorFrom(err).body);
      });

      v1.post("/chat/completions", (req, reply) =>
        handleChatCompletion(completionsDeps, req, reply),
      );

      const listModels = async (trace: TraceContext) =>
        (await upstreams.llm.listModels({}, traceCallOptions(trace))).models;
      v1.get("/models", async (req, reply) => {
        try {
          const models = await listModels(req.trace);
          return { object: "list", data: models.map((m) => modelObject(m.id)) };
        } catch (err) {
          req.log.warn({ ...traceLogFields(req.trace), err, stage: "llm" }, "llm call failed");
          return sendOpenAiError(reply, llmFailed);
        }
      });
      // Model ids may hold slashes (vLLM serves "org/name").
      v1.get("/models/*", async (req, reply) => {
        const id = (req.params as { "*": string })["*"];
        try {
          const models = await listModels(req.trace);
          if (models.some((m) => m.id === id)) return modelObject(id);
        } catch (err) {
          req.log.warn({ ...traceLogFields(req.trace), err, stage: "llm" }, "llm call failed");
          return sendOpenAiError(reply, llmFailed);
        }
        return reply.code(404).send({
          error: {
            message: `The model '${id}' does not exist`,
            type: "invalid_request_error",
            param: "model",
            code: "model_not_found",
          },
        });
      });
    },
    { prefix: "/v1" },
  );
}
