import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { LLMService } from "../../../gen/chat/v1/llm_pb.js";
import type { Logger } from "../../lib/logger.js";
import type { LlmBackend } from "./backend.js";

export interface LlmServiceDeps {
  readonly backend: LlmBackend;
  /** Where a cancelled stream is reported; nothing is logged without one. */
  readonly logger?: Logger;
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

/** chat.v1.LLMService over an LlmBackend. */
export function createLlmService({
  backend,
  logger,
}: LlmServiceDeps): ServiceImpl<typeof LLMService> {
  return {
    async generate(req, ctx) {
      requireText(req.text);
      const { reply } = await backend.generate({ text: req.text, userId: req.userId }, ctx.signal);
      return { reply };
    },
    async *generateStream(req, ctx) {
      requireText(req.text);
      const unwatch = watchCancel(ctx, logger);
      try {
        for await (const delta of backend.stream(
          { text: req.text, userId: req.userId },
          ctx.signal,
        )) {
          yield { delta };
        }
      } finally {
        unwatch();
      }
    },
  };
}
