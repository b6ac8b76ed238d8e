import type { FastifyReply, FastifyRequest } from "fastify";
import { traceLogFields } from "../../lib/trace.js";
import { maxUserIdChars, userIdTooLong } from "../../lib/user-id.js";
import { admitChat, type ChatDeps, type ChatInput, completeChat, parseChatInput } from "../chat.js";
import { cancelledOnClose } from "../client-gone.js";
import { type QuotaState, rateLimitHeaderNames, rateLimitHeaders } from "../quota.js";
import { chatUsage } from "../quota-cost.js";
import { relayReply, type StreamingChat, stallLimitOf } from "../reply-stream.js";
import { isUserId } from "../request-guards.js";
import { openSseStream, type SseStream, sseDataFrame } from "../sse.js";
import { notifyDone, type OnChatDone } from "../stream.js";
import {
  type CompletionHead,
  completionBody,
  completionChunk,
  completionHead,
  usageChunk,
} from "./completions.js";
import { invalidRequest, type OpenAiError, openAiErrorFrom, outcomeOf } from "./errors.js";
import { type CompletionRequest, parseCompletionRequest } from "./request.js";
import { userFor, userMismatch } from "./user.js";

/** What POST /v1/chat/completions needs beside the chat's own deps. */
export interface CompletionsDeps extends Omit<ChatDeps, "onQuota"> {
  readonly maxTextChars: number;
  /** Called with each streamed chat that reached its end (history). */
  readonly onChatDone?: OnChatDone | undefined;
  /** Told how each chat ended: "ok", an error's words, "llm failed" or "client gone". */
  readonly count: (outcome: string) => void;
  /** STREAM_KEEPALIVE_MS: a comment line after this long without a chunk (openSseStream). */
  readonly keepAliveMs?: number | undefined;
}

/** Sends an OpenAI error; an exhausted daily quota tells the SDKs not to retry. */
export function sendOpenAiError(reply: FastifyReply, err: OpenAiError): FastifyReply {
  if (err.body.error.type === "insufficient_quota") reply.header("x-should-retry", "false");
  return reply.code(err.status).send(err.body);
}

const isOpenAiError = (value: object): value is OpenAiError => "status" in value;

/** The request as a chat of the chain, or the OpenAI error that refuses it. */
function chatInputOf(
  req: FastifyRequest,
  deps: CompletionsDeps,
): { request: CompletionRequest; input: ChatInput } | OpenAiError {
  const request = parseCompletionRequest(req.body);
  if (isOpenAiError(request)) return request;
  // Without API keys, `safety_identifier` stands in for an absent `user`.
  const user = userFor(req, request.user) ?? request.safetyIdentifier;
  if (user === userMismatch) return invalidRequest("user does not match the api key", "user");
  if (user === undefined) {
    return invalidRequest(
      "user is required: send the user (or safety_identifier) field, or an API key",
      "user",
    );
  }
  // Checked here, so the answer names OpenAI's field rather than /chat's user_id.
  const field = user === request.user || req.apiUser !== undefined ? "user" : "safety_identifier";
  if (!isUserId(user)) {
    return invalidRequest(`${field} must be a non-empty string of valid Unicode`, field);
  }
  if (userIdTooLong(user)) {
    return invalidRequest(`${field} is longer than ${maxUserIdChars} characters`, field);
  }
  const userId = user;
  const input = parseChatInput({ user_id: userId, text: request.text }, deps.maxTextChars);
  if ("status" in input) return openAiErrorFrom(input);
  return {
    request,
    input: {
      ...input,
      maxTokens: request.maxTokens,
      context: request.context,
      sampling: request.sampling,
      responseFormat: request.responseFormat,
    },
  };
}

/**
 * POST /v1/chat/completions: the last user message runs through Filter →
 * Token → LLM → History like a /chat, the messages before it sent to the
 * model with it, answered as OpenAI's `chat.completion`,
 * or with `stream: true` as `chat.completion.chunk` events and `[DONE]`.
 * Refusals before the reply starts are OpenAI error JSON with the contract's
 * statuses; a model failure after the stream started is an error event.
 */
export async function handleChatCompletion(
  deps: CompletionsDeps,
  req: FastifyRequest,
  reply: FastifyReply,
): Promise<unknown> {
  const parsed = chatInputOf(req, deps);
  if (isOpenAiError(parsed)) {
    deps.count(outcomeOf(parsed));
    return sendOpenAiError(reply, parsed);
  }
  const { request, input } = parsed;
  let quota: QuotaState | undefined;
  const onQuota = (state: QuotaState) => {
    quota = state;
  };
  const chatDeps: ChatDeps = { ...deps, trace: req.trace, onQuota };

  if (!request.stream) {
    const chat = await completeChat(
      { ...chatDeps, clientGone: cancelledOnClose(reply.raw) },
      input,
      req.id,
    );
    deps.count("status" in chat ? chat.body.error : "ok");
    // After a model failure the charge was given back: the quota seen before it is stale.
    const status = "status" in chat ? chat.status : 200;
    if (quota !== undefined && (status === 200 || status === 429)) {
      reply.headers(rateLimitHeaders(quota));
    }
    if ("status" in chat) return sendOpenAiError(reply, openAiErrorFrom(chat));
    const head = completionHead(req.id, chat.model || request.model);
    const usage = await chatUsage(chat.prompt, chat.reply, chat.reportedUsage);
    return completionBody(head, chat.reply, chat.finishReason, usage);
  }

  const admitted = await admitChat(chatDeps, input, req.id);
  if (quota !== undefined) reply.headers(rateLimitHeaders(quota));
  if ("status" in admitted) {
    deps.count(admitted.body.error);
    return sendOpenAiError(reply, openAiErrorFrom(admitted));
  }
  reply.hijack();
  // Headers wait for the first chunk: a model that fails before it gets a
  // status of its own, as OpenAI answers then.
  const sse = openSseStream(reply.raw, reply.getHeaders(), {
    deferHeaders: true,
    stallLimitMs: stallLimitOf(deps.llmTimeoutMs),
    keepAliveMs: deps.keepAliveMs,
  });
  const outcome = await streamCompletion(
    { ...chatDeps, onChatDone: deps.onChatDone },
    sse,
    { input, admitted, requestId: req.id },
    request,
  );
  deps.count(outcome);
  deps.logger.info({ ...traceLogFields(req.trace), outcome }, "stream ended");
  return undefined;
}

/** Streams the reply as chunks; resolves with how the stream ended. */
async function streamCompletion(
  deps: ChatDeps & { readonly onChatDone?: OnChatDone | undefined },
  sse: SseStream,
  chat: StreamingChat,
  request: CompletionRequest,
): Promise<string> {
  let head: CompletionHead | undefined;
  const send = (data: unknown) => sse.write(sseDataFrame(data));
  // The first chunk names the model, which the model's first piece tells.
  const start = async (model: string): Promise<CompletionHead> => {
    if (head !== undefined) return head;
    head = completionHead(chat.requestId, model || request.model);
    await send(
      completionChunk(head, { role: "assistant", content: "" }, null, request.includeUsage),
    );
    return head;
  };

  const result = await relayReply(deps, chat, sse.signal, async (text, model) =>
    send(completionChunk(await start(model), { content: text }, null, request.includeUsage)),
  );
  if (result.outcome === "client too slow") sse.cutOff();
  if (result.outcome === "llm failed") {
    const failed = openAiErrorFrom(result.error);
    // The charge was given back: the quota headers seen before are stale.
    if (!sse.answerInstead(failed.status, failed.body, rateLimitHeaderNames)) {
      await send(failed.body);
      sse.end();
    }
    // Counted by its words, as a unary chat's failure is.
    return result.error.body.error;
  }
  if (result.outcome !== "ok") return result.outcome;

  const done = await start(result.model);
  await send(completionChunk(done, {}, result.finishReason, request.includeUsage));
  if (request.includeUsage) {
    const { prompt } = chat.admitted;
    await send(usageChunk(done, await chatUsage(prompt, result.reply, result.reportedUsage)));
  }
  await notifyDone(deps, chat, result.reply);
  await send("[DONE]");
  sse.end();
  return "ok";
}
