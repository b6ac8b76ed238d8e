import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { Registry } from "prom-client";
import { UnsupportedParameterSchema } from "../../../gen/chat/v1/errors_pb.js";
import {
  type ChatMessage,
  type GenerateRequest,
  type GenerateStreamRequest,
  type LLMService,
  type ResponseFormat,
  ResponseFormatType,
  Role,
  type Sampling,
} from "../../../gen/chat/v1/llm_pb.js";
import type { Logger } from "../../lib/logger.js";
import { traceLogFields, traceOf } from "../../lib/trace.js";
import type {
  ContextMessage,
  ContextRole,
  LlmBackend,
  LlmRequest,
  LlmResponseFormat,
  LlmResult,
  LlmSampling,
} from "./backend.js";
import { createLlmMetrics } from "./llm-metrics.js";

export interface LlmServiceDeps {
  readonly backend: LlmBackend;
  /** Where a cancelled stream is reported; nothing is logged without one. */
  readonly logger?: Logger;
  /** LLM_MAX_TOKENS: the cap of every reply; a request may ask for less. None when absent. */
  readonly maxTokens?: number;
  /** LLM_MAX_REPLY_BYTES: a longer reply is cut there (512 KiB when absent). */
  readonly maxReplyBytes?: number;
  /** Where the model's tokens, finish reasons and time to first token are counted; nowhere when absent. */
  readonly registry?: Registry;
}

/**
 * The most bytes (UTF-8) of a reply by default. A model server may ignore
 * max_tokens; a reply must stay small enough for the gateway to read (4 MiB)
 * and, with its text, for the history to store (MAX_REQUEST_BYTES, 1 MiB).
 * 512 KiB is over 100k tokens of English, more than models write at once.
 */
export const defaultMaxReplyBytes = 524_288;

const encoder = new TextEncoder();

/**
 * Cuts `text` to at most `maxBytes` bytes of UTF-8, at a character boundary;
 * undefined when it fits. A string of n UTF-16 units takes at most 3n bytes,
 * so short ones are not measured.
 */
export function cutToBytes(text: string, maxBytes: number): string | undefined {
  if (text.length * 3 <= maxBytes || Buffer.byteLength(text) <= maxBytes) return undefined;
  // encodeInto writes whole characters only.
  const { read } = encoder.encodeInto(text, new Uint8Array(maxBytes));
  return text.slice(0, read);
}

const noContext: readonly ContextMessage[] = [];

const roleNames: Partial<Record<Role, ContextRole>> = {
  [Role.SYSTEM]: "system",
  [Role.DEVELOPER]: "developer",
  [Role.USER]: "user",
  [Role.ASSISTANT]: "assistant",
};

/** The sampling parameters that were set, as backends take them. */
function samplingOf(sampling: Sampling): LlmSampling {
  const { temperature, topP, stop, seed, presencePenalty, frequencyPenalty, reasoningEffort } =
    sampling;
  return {
    ...(temperature !== undefined && { temperature }),
    ...(topP !== undefined && { topP }),
    ...(stop.length > 0 && { stop }),
    ...(seed !== undefined && { seed: Number(seed) }),
    ...(presencePenalty !== undefined && { presencePenalty }),
    ...(frequencyPenalty !== undefined && { frequencyPenalty }),
    ...(reasoningEffort !== undefined && { reasoningEffort }),
  };
}

/**
 * The form asked of the reply, as backends take it; INVALID_ARGUMENT for a
 * backend that cannot give it, or a json_schema that is no JSON object.
 */
function responseFormatOf(
  format: ResponseFormat | undefined,
  backend: LlmBackend,
): LlmResponseFormat | undefined {
  if (format === undefined || format.type === ResponseFormatType.UNSPECIFIED) return undefined;
  if (backend.followsResponseFormat !== true) {
    throw new ConnectError(
      `the ${backend.name} backend cannot answer in the form response_format asks`,
      Code.InvalidArgument,
      undefined,
      [{ desc: UnsupportedParameterSchema, value: { param: "response_format" } }],
    );
  }
  if (format.type === ResponseFormatType.JSON_OBJECT) return { type: "json_object" };
  if (format.type !== ResponseFormatType.JSON_SCHEMA) {
    throw new ConnectError("response_format.type is unknown", Code.InvalidArgument);
  }
  const jsonSchema = jsonObjectIn(format.jsonSchema);
  if (jsonSchema === undefined) {
    throw new ConnectError(
      "response_format.json_schema must be a JSON object",
      Code.InvalidArgument,
    );
  }
  return { type: "json_schema", jsonSchema };
}

/** The JSON object a text holds, or undefined. */
function jsonObjectIn(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** A message of the context as backends take it; INVALID_ARGUMENT without a known role. */
function contextMessage(message: ChatMessage, i: number): ContextMessage {
  const role = roleNames[message.role];
  if (role === undefined) {
    throw new ConnectError(`context[${i}].role must be set`, Code.InvalidArgument);
  }
  return { role, content: message.content };
}

function requireText(text: string): void {
  if (text === "") throw new ConnectError("text is required", Code.InvalidArgument);
}

/**
 * Logs "stream cancelled" the moment the call's signal aborts while the
 * stream is still running (the caller went away or its deadline passed).
 * Connect also aborts the signal when a finished call's response closes, so
 * the listener must be removed by calling the returned function once the
 * stream is over.
 */
function watchCancel(ctx: HandlerContext, logger: Logger | undefined): () => void {
  if (logger === undefined) return () => {};
  const onAbort = () => {
    const reason = ctx.signal.reason;
    logger.info(
      {
        // The trace's request id, as the call's request line has it: the
        // caller's x-request-id only when valid, a new one otherwise.
        ...traceLogFields(traceOf(ctx)),
        reason: reason instanceof Error ? reason.message : String(reason),
      },
      "stream cancelled",
    );
  };
  if (ctx.signal.aborted) {
    onAbort();
    return () => {};
  }
  ctx.signal.addEventListener("abort", onAbort, { once: true });
  return () => ctx.signal.removeEventListener("abort", onAbort);
}

/** The usage and finish reason of a result, as message fields (absent ones left out). */
function endFields(end: Omit<LlmResult, "reply">) {
  return {
    ...(end.usage && { usage: end.usage }),
    ...(end.finishReason !== undefined && { finishReason: end.finishReason }),
  };
}

/** chat.v1.LLMService over an LlmBackend. */
export function createLlmService({
  backend,
  logger,
  maxTokens: cap,
  maxReplyBytes = defaultMaxReplyBytes,
  registry,
}: LlmServiceDeps): ServiceImpl<typeof LLMService> {
  const model = backend.model ?? backend.name;
  const metrics = registry && createLlmMetrics(registry, model);
  const tooLong = (ctx: HandlerContext, chars?: number) =>
    logger?.warn(
      {
        ...traceLogFields(traceOf(ctx)),
        request_id: ctx.requestHeader.get("x-request-id") ?? undefined,
        ...(chars !== undefined && { reply_chars: chars }),
        max_reply_bytes: maxReplyBytes,
      },
      "reply cut at LLM_MAX_REPLY_BYTES",
    );
  const request = (
    req: GenerateRequest | GenerateStreamRequest,
    ctx: HandlerContext,
  ): LlmRequest => {
    requireText(req.text);
    if (req.maxTokens < 0) {
      throw new ConnectError("max_tokens must not be negative", Code.InvalidArgument);
    }
    const asked = req.maxTokens === 0 ? undefined : req.maxTokens;
    const maxTokens = asked === undefined ? cap : Math.min(asked, cap ?? asked);
    return {
      text: req.text,
      context: req.context.length === 0 ? noContext : req.context.map(contextMessage),
      sampling: req.sampling === undefined ? undefined : samplingOf(req.sampling),
      responseFormat: responseFormatOf(req.responseFormat, backend),
      userId: req.userId,
      maxTokens,
      trace: traceOf(ctx),
    };
  };
  return {
    async generate(req, ctx) {
      // The context itself: its signal is made only if the backend reads it.
      const result = await backend.generate(request(req, ctx), ctx);
      const cut = cutToBytes(result.reply, maxReplyBytes);
      const end = cut === undefined ? result : { ...result, finishReason: "length" };
      metrics?.ended(end);
      if (cut !== undefined) {
        tooLong(ctx, result.reply.length);
        return { reply: cut, model, ...endFields(end) };
      }
      return { reply: result.reply, model, ...endFields(end) };
    },
    async *generateStream(req, ctx) {
      const llmRequest = request(req, ctx);
      const unwatch = watchCancel(ctx, logger);
      let first = true;
      let bytesLeft = maxReplyBytes;
      const startedAt = performance.now();
      let textSeen = false;
      let ended = false;
      try {
        for await (const piece of backend.stream(llmRequest, ctx.signal)) {
          const head = first ? { model } : {};
          first = false;
          if (typeof piece !== "string") {
            ended = true;
            metrics?.ended(piece);
            yield { ...head, ...endFields(piece) };
            continue;
          }
          if (!textSeen) {
            textSeen = true;
            metrics?.firstPiece((performance.now() - startedAt) / 1_000);
          }
          const cut = cutToBytes(piece, bytesLeft);
          if (cut !== undefined) {
            // The model is stopped (the backend's stream is left), its usage unknown.
            tooLong(ctx);
            metrics?.ended({ finishReason: "length" });
            if (cut !== "") yield { delta: cut, ...head };
            yield { ...(cut === "" ? head : {}), finishReason: "length" };
            return;
          }
          bytesLeft -= Buffer.byteLength(piece);
          yield { delta: piece, ...head };
        }
        // A backend that tells nothing at the end (echo) finished it.
        if (!ended) metrics?.ended({});
        // Even an empty reply names its model.
        if (first) yield { model };
      } finally {
        unwatch();
      }
    },
    async listModels() {
      return { models: [{ id: model }] };
    },
  };
}
