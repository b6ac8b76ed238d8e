import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import type { Logger } from "../lib/logger.js";
import type { LabeledCounter as Counter } from "../lib/metrics.js";
import { type TraceContext, traceLogFields } from "../lib/trace.js";
import {
  type AdmittedChat,
  admitChat,
  type ChatDeps,
  type ChatInput,
  parseChatInput,
} from "./chat.js";
import type { HttpError } from "./errors.js";
import { type QuotaState, rateLimitHeaderNames, rateLimitHeaders } from "./quota.js";
import type { CostPolicy } from "./quota-cost.js";
import type { Refunder } from "./refunder.js";
import { relayReply, type StreamingChat, stallLimitOf } from "./reply-stream.js";
import { openSseStream, type SseStream } from "./sse.js";
import type { Upstreams } from "./upstreams.js";

/** A streamed chat that reached `done`: what history keeps. */
export interface StreamedChat {
  readonly requestId: string;
  readonly userId: string;
  readonly cleaned: string;
  readonly reply: string;
  /** The request's trace. */
  readonly trace?: TraceContext | undefined;
}

/**
 * Called once a streamed chat is done, before the stream ends (so a client
 * that sees the end can read the chat back). This is where history saving
 * plugs in; an error thrown here is logged and does not reach the client,
 * who already has the whole reply.
 */
export type OnChatDone = (chat: StreamedChat) => Promise<void> | void;

export interface ChatStreamDeps {
  readonly upstreams: Upstreams;
  readonly logger: Logger;
  readonly maxTextChars: number;
  /** Counts chats by outcome (`ok`, an error's words, or `client_gone`). */
  readonly chats?: Counter<"outcome">;
  /** Counts refunds after LLM failures, by result. */
  readonly refunds?: Counter<"result">;
  readonly onChatDone?: OnChatDone | undefined;
  /** How chats are priced (QUOTA_COST_MODE); the fixed cost when absent. */
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

const isHttpError = (value: object): value is HttpError => "status" in value;

/**
 * Adds `POST /chat/stream` (contract, Streaming): the same body and the same
 * JSON errors as /chat until the reply starts, that is while Filter and
 * Token run and until the model's first piece; then `text/event-stream`
 * with `meta`, one or more `delta`, and `done` (or `error` when the model
 * fails, the charge then given back). A model that fails before its first
 * piece (and before the first keep-alive comment) is answered as /chat
 * answers it (500 `llm failed`; 400 `text too long` for a prompt over the
 * model's context). A client that goes
 * away cancels the model call; the one charge already taken stays.
 */
export function registerChatStream(app: FastifyInstance, deps: ChatStreamDeps): void {
  const { upstreams, logger } = deps;
  const count = (outcome: string) => deps.chats?.inc({ outcome: outcome.replaceAll(" ", "_") });

  app.post("/chat/stream", async (req, reply) => {
    const input = parseChatInput(req.body, deps.maxTextChars);
    if (isHttpError(input)) {
      count(input.body.error);
      return reply.code(input.status).send(input.body);
    }
    let quota: QuotaState | undefined;
    const onQuota = (state: QuotaState) => {
      quota = state;
    };
    const chatDeps: ChatDeps = {
      upstreams,
      logger,
      trace: req.trace,
      onQuota,
      ...(deps.refunds && { refunds: deps.refunds }),
      ...(deps.cost && { cost: deps.cost }),
      ...(deps.refunder && { refunder: deps.refunder }),
      ...(deps.stopping && { stopping: deps.stopping }),
      ...(deps.llmTimeoutMs !== undefined && { llmTimeoutMs: deps.llmTimeoutMs }),
    };
    const admitted = await admitChat(chatDeps, input, req.id);
    if (quota !== undefined) reply.headers(rateLimitHeaders(quota));
    if (isHttpError(admitted)) {
      count(admitted.body.error);
      return reply.code(admitted.status).send(admitted.body);
    }

    reply.hijack();
    // Headers and `meta` wait for the model's first piece, so that a model
    // that fails before it gets the status /chat gives it.
    const sse = openSseStream(reply.raw, reply.getHeaders(), {
      deferHeaders: true,
      stallLimitMs: stallLimitOf(deps.llmTimeoutMs),
      keepAliveMs: deps.keepAliveMs,
    });
    const outcome = await streamReply(
      { ...chatDeps, sse, onChatDone: deps.onChatDone },
      input,
      admitted,
      req.id,
    );
    count(outcome);
    logger.info({ ...traceLogFields(req.trace), outcome }, "stream ended");
  });
}

interface StreamDeps extends ChatDeps {
  readonly sse: SseStream;
  readonly onChatDone?: OnChatDone | undefined;
}

/** Streams the model's reply as events; resolves with how the stream ended. */
async function streamReply(
  deps: StreamDeps,
  input: ChatInput,
  admitted: AdmittedChat,
  requestId: string,
): Promise<string> {
  const { sse } = deps;
  let started = false;
  const delta = async (text: string) => {
    if (!started) {
      started = true;
      await sse.send("meta", { cleaned: admitted.cleaned, remaining: admitted.remaining });
    }
    await sse.send("delta", { text });
  };
  const chat: StreamingChat = { input, admitted, requestId };
  const result = await relayReply(deps, chat, sse.signal, delta);
  if (result.outcome === "client too slow") sse.cutOff();
  if (result.outcome === "llm failed") {
    // The charge was given back: the quota headers seen before are stale.
    const { status, body } = result.error;
    // Counted by its words, as /chat's failure is (400 text too long, 500 llm failed).
    if (sse.answerInstead(status, body, rateLimitHeaderNames)) return body.error;
    await sse.send("error", { error: "llm failed" });
    sse.end();
  }
  if (result.outcome !== "ok") return result.outcome;
  // The contract has one delta or more before done: an empty reply is one empty delta.
  if (result.reply === "") await delta("");
  // What is left once the chat was priced: in tokens mode the settled charge, not meta's reservation.
  await sse.send("done", {
    reply: result.reply,
    remaining: result.remaining ?? admitted.remaining,
  });
  await notifyDone(deps, chat, result.reply);
  sse.end();
  return "ok";
}

/** Hands a finished streamed chat to `onChatDone`; an error there is logged, never thrown. */
export async function notifyDone(
  deps: {
    readonly logger: FastifyBaseLogger;
    readonly trace?: TraceContext | undefined;
    readonly onChatDone?: OnChatDone | undefined;
  },
  chat: StreamingChat,
  reply: string,
): Promise<void> {
  if (deps.onChatDone === undefined) return;
  try {
    await deps.onChatDone({
      requestId: chat.requestId,
      userId: chat.input.userId,
      cleaned: chat.admitted.cleaned,
      reply,
      trace: deps.trace,
    });
  } catch (err) {
    deps.logger.error({ ...traceLogFields(deps.trace), err }, "onChatDone failed");
  }
}
