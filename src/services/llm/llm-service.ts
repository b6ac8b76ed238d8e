import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { LLMService } from "../../../gen/chat/v1/llm_pb.js";
import type { Logger } from "../../lib/logger.js";
import { traceLogFields, traceOf } from "../../lib/trace.js";
import type { LlmBackend, LlmRequest, LlmResult } from "./backend.js";

export interface LlmServiceDeps {
  readonly backend: LlmBackend;
  /** Where a cancelled stream is reported; nothing is logged without one. */
  readonly logger?: Logger;
  /** LLM_MAX_TOKENS: the cap of every reply; a request may ask for less. None when absent. */
  readonly maxTokens?: number;
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
        ...traceLogFields(traceOf(ctx)),
        request_id: ctx.requestHeader.get("x-request-id") ?? undefined,
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
}: LlmServiceDeps): ServiceImpl<typeof LLMService> {
  const model = backend.model ?? backend.name;
  const request = (
    req: { text: string; userId: string; maxTokens: number },
    ctx: HandlerContext,
  ): LlmRequest => {
    requireText(req.text);
    if (req.maxTokens < 0) {
      throw new ConnectError("max_tokens must not be negative", Code.InvalidArgument);
    }
    const asked = req.maxTokens === 0 ? undefined : req.maxTokens;
    const maxTokens = asked === undefined ? cap : Math.min(asked, cap ?? asked);
    return { text: req.text, userId: req.userId, maxTokens, trace: traceOf(ctx) };
  };
  return {
    async generate(req, ctx) {
      // The context itself: its signal is made only if the backend reads it.
      const result = await backend.generate(request(req, ctx), ctx);
      return { reply: result.reply, model, ...endFields(result) };
    },
    async *generateStream(req, ctx) {
      const llmRequest = request(req, ctx);
      const unwatch = watchCancel(ctx, logger);
      let first = true;
      try {
        for await (const piece of backend.stream(llmRequest, ctx.signal)) {
          const head = first ? { model } : {};
          first = false;
          yield typeof piece === "string"
            ? { delta: piece, ...head }
            : { ...head, ...endFields(piece) };
        }
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
