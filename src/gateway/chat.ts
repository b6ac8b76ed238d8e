import { Code, ConnectError } from "@connectrpc/connect";
import type { FastifyBaseLogger } from "fastify";
import type { ResponseFormatType, Role } from "../../gen/chat/v1/llm_pb.js";
import type { LabeledCounter as Counter } from "../lib/metrics.js";
import { type TraceContext, traceCallOptions, traceLogFields } from "../lib/trace.js";
import type { Cancellation } from "../lib/unary-transport.js";
import { codePointsOver, userIdTooLong } from "../lib/user-id.js";
import { badRequest, type HttpError, httpErrorFromRpc, type Stage } from "./errors.js";
import type { HistoryRecorder } from "./history-recorder.js";
import { chargeChat, type QuotaState, retryOnceIfUnavailable, settleChat } from "./quota.js";
import { type ChatUsage, type CostPolicy, chatUsage, promptOf } from "./quota-cost.js";
import { chargeOutcomeUnknown, type Refunder } from "./refunder.js";
import { isUserId } from "./request-guards.js";
import type { Upstreams } from "./upstreams.js";

/** A message of the conversation before a chat's text (the OpenAI API's earlier messages). */
export interface ContextMessage {
  readonly role: Role;
  readonly content: string;
}

/** Sampling parameters for the model (the OpenAI API's), each unset unless asked for. */
export interface ChatSampling {
  readonly temperature?: number | undefined;
  readonly topP?: number | undefined;
  readonly stop: string[];
  readonly seed?: bigint | undefined;
  readonly presencePenalty?: number | undefined;
  readonly frequencyPenalty?: number | undefined;
  readonly reasoningEffort?: string | undefined;
}

/** The form a reply must take, beside text (the OpenAI API's response_format). */
export interface ChatResponseFormat {
  readonly type: ResponseFormatType;
  /** For JSON_SCHEMA: the API's json_schema object as JSON text. */
  readonly jsonSchema: string;
}

/** A valid chat request. */
export interface ChatInput {
  readonly userId: string;
  readonly text: string;
  /**
   * The conversation before the text, oldest first: checked by the filter,
   * counted in the prompt and sent to the model; neither cleaned nor kept.
   * None when absent (/chat).
   */
  readonly context?: readonly ContextMessage[] | undefined;
  /** Passed on to the model; none when absent (/chat). */
  readonly sampling?: ChatSampling | undefined;
  /** The form the reply must take; text when absent. */
  readonly responseFormat?: ChatResponseFormat | undefined;
  /** Most tokens the reply may have (the OpenAI API's max_tokens); the LLM service's cap when absent. */
  readonly maxTokens?: number | undefined;
}

/** The contract's 200 body of POST /chat. */
export interface ChatOutput {
  readonly cleaned: string;
  readonly reply: string;
  readonly remaining: number;
}

/** Checks a parsed JSON body against the contract; an HttpError says what is wrong. */
export function parseChatInput(body: unknown, maxTextChars: number): ChatInput | HttpError {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return badRequest("bad json or missing user_id");
  }
  const { user_id: userId, text } = body as Record<string, unknown>;
  if (!isUserId(userId)) return badRequest("bad json or missing user_id");
  if (userIdTooLong(userId)) return badRequest("user_id too long");
  if (typeof text !== "string" || text === "") return badRequest("text is required");
  if (codePointsOver(text, maxTextChars)) return badRequest("text too long");
  return { userId, text };
}

export interface ChatDeps {
  readonly upstreams: Upstreams;
  readonly logger: FastifyBaseLogger;
  /** The request's trace: sent with every call made for the chat, and on its log lines. */
  readonly trace?: TraceContext | undefined;
  /** Counts refunds after LLM failures, by result. */
  readonly refunds?: Counter<"result">;
  /** Told the user's quota once the charge is answered (for the RateLimit headers). */
  readonly onQuota?: (state: QuotaState) => void;
  /** Keeps each successful chat; it never throws, fails or delays the chat. */
  readonly history?: HistoryRecorder;
  /** How chats are priced (QUOTA_COST_MODE); the fixed cost when absent. */
  readonly cost?: CostPolicy;
  /** Gives charges back, retrying in the background; without it one refund is tried. */
  readonly refunder?: Refunder;
  /**
   * Aborted when the gateway stops (before it must exit): the streamed
   * replies still running are cancelled and fail as a failing model does,
   * their charges given back, rather than being cut off with the charge
   * kept. Unary model calls are not given it: a signal every call in flight
   * listens to cost the gateway ~34 MB more peak RSS under `make bench`.
   */
  readonly stopping?: AbortSignal;
  /**
   * LLM_TIMEOUT_MS: the deadline of a streamed reply, set by the call. A
   * stream whose relay is still waiting on the client to take a piece when
   * it comes is the client's doing (the model is held back with it): cut
   * off, the charge kept, not a failing model's. The transport's default
   * deadline without it.
   */
  readonly llmTimeoutMs?: number;
  /**
   * Cancelled when the client of a unary chat went away before its answer
   * (cancelledOnClose): the model call is cancelled, so a model server stops
   * generating for no one (an SDK that timed out and retried would have had
   * each attempt generate on). The charge stays, as a stream's does then;
   * a client gone before the model call gets no call and the charge back.
   */
  readonly clientGone?: Cancellation;
}

/** The texts of a context, for the filter to check. */
const contextTexts = (context: readonly ContextMessage[] | undefined): string[] =>
  context === undefined ? [] : context.map((m) => m.content);

/** What the model is asked for a chat, unary or streamed (the context each request's own array). */
export const modelRequest = (input: ChatInput, cleaned: string) => ({
  text: cleaned,
  userId: input.userId,
  maxTokens: input.maxTokens ?? 0,
  context: input.context === undefined ? [] : [...input.context],
  sampling: input.sampling,
  responseFormat: input.responseFormat,
});

/** What a unary chat whose client went away is counted as (chatmesh_chats_total). */
const clientGoneError: HttpError = { status: 499, body: { error: "client gone" } };

/** A chat let through Filter and Token: the text to answer, and the quota left. */
export interface AdmittedChat {
  readonly cleaned: string;
  readonly remaining: number;
  /** What the prompt's tokens are counted from: the context, then the cleaned text (promptOf). */
  readonly prompt: string;
}

/** A chat answered in full, with what /v1/chat/completions tells beside the reply. */
export interface CompletedChat extends ChatOutput {
  /** What the prompt's tokens are counted from (AdmittedChat's). */
  readonly prompt: string;
  /** The model that answered. */
  readonly model: string;
  /** Why the reply ended; "stop" unless the model said otherwise. */
  readonly finishReason: string;
  /** The usage the model server reported, if it did. */
  readonly reportedUsage: ChatUsage | undefined;
}

/**
 * The steps before the model, shared by /chat and /chat/stream: Filter cleans
 * and checks the text, then Token charges the quota under the request id (so
 * the charge can be refunded when the model fails).
 */
export async function admitChat(
  deps: ChatDeps,
  input: ChatInput,
  requestId: string,
): Promise<AdmittedChat | HttpError> {
  const { upstreams, logger, trace } = deps;
  const callOptions = traceCallOptions(trace);

  let cleaned: string;
  try {
    const context = contextTexts(input.context);
    const answer = await upstreams.filter.filter({ text: input.text, context }, callOptions);
    // A filter older than FilterRequest.context reads the text alone: what it
    // did not check must not reach the model.
    if (answer.contextChecked !== context.length) {
      throw new ConnectError(
        `the filter checked ${answer.contextChecked} of the ${context.length} context messages (older than the gateway?)`,
        Code.FailedPrecondition,
      );
    }
    cleaned = answer.cleaned;
  } catch (err) {
    return failedCall(logger, "filter", err, trace);
  }

  const prompt = promptOf(cleaned, input.context);
  try {
    const cost = BigInt((await deps.cost?.reserve(prompt, input.maxTokens)) ?? 0);
    const { remaining } = await chargeChat(
      upstreams.token,
      { userId: input.userId, chargeId: requestId, cost },
      callOptions,
      deps.onQuota,
    );
    return { cleaned, remaining: Number(remaining), prompt };
  } catch (err) {
    // The service may have charged before it failed to answer: give it back if so.
    if (chargeOutcomeUnknown(err)) deps.refunder?.refundIfCharged(input.userId, requestId, trace);
    return failedCall(logger, "token", err, trace);
  }
}

/** Runs one chat through Filter → Token → LLM; a failed model call is refunded. */
export async function runChat(
  deps: ChatDeps,
  input: ChatInput,
  requestId: string,
): Promise<ChatOutput | HttpError> {
  const chat = await completeChat(deps, input, requestId);
  if ("status" in chat) return chat;
  return { cleaned: chat.cleaned, reply: chat.reply, remaining: chat.remaining };
}

/**
 * runChat with everything the model told: what /chat and /v1/chat/completions
 * share. The chat is kept in history, and its charge settled to its usage
 * when chats are priced by tokens.
 */
export async function completeChat(
  deps: ChatDeps,
  input: ChatInput,
  requestId: string,
): Promise<CompletedChat | HttpError> {
  const admitted = await admitChat(deps, input, requestId);
  if ("status" in admitted) return admitted;
  const { cleaned } = admitted;

  // (A call, not a property read: TypeScript would keep it false once checked.)
  const clientGone = () => deps.clientGone?.cancelled === true;
  if (clientGone()) {
    // Gone while Filter and Token answered: no model call, the charge back (as for a stream).
    deps.logger.info(traceLogFields(deps.trace), "client went away before the model call");
    await refund(deps, input.userId, requestId);
    return clientGoneError;
  }
  let answer: Awaited<ReturnType<Upstreams["llm"]["generate"]>>;
  try {
    answer = await deps.upstreams.llm.generate(
      modelRequest(input, cleaned),
      traceCallOptions(deps.trace, deps.clientGone),
    );
  } catch (err) {
    if (clientGone()) {
      deps.logger.info(
        traceLogFields(deps.trace),
        "client went away: model call cancelled, the charge kept",
      );
      // In tokens mode, settled to the prompt: no reply was given.
      await settle(deps, input.userId, requestId, () => chatUsage(admitted.prompt, "", undefined));
      return clientGoneError;
    }
    const failed = failedCall(deps.logger, "llm", err, deps.trace);
    await refund(deps, input.userId, requestId);
    return failed;
  }
  const { reply } = answer;
  deps.history?.record({
    userId: input.userId,
    text: cleaned,
    reply,
    createdAt: new Date(),
    requestId,
    trace: deps.trace,
  });
  const reportedUsage = answer.usage && {
    promptTokens: answer.usage.promptTokens,
    completionTokens: answer.usage.completionTokens,
    totalTokens: answer.usage.totalTokens,
  };
  const settled = await settle(deps, input.userId, requestId, () =>
    chatUsage(admitted.prompt, reply, reportedUsage),
  );
  return {
    cleaned,
    prompt: admitted.prompt,
    reply,
    remaining: settled ?? admitted.remaining,
    model: answer.model,
    finishReason: answer.finishReason || "stop",
    reportedUsage,
  };
}

/**
 * Settles an answered chat's charge to its usage when chats are priced by
 * tokens; resolves with what is left then. A failure is logged and the
 * reservation stays: the reply is given all the same.
 */
export async function settle(
  deps: ChatDeps,
  userId: string,
  chargeId: string,
  usage: () => Promise<ChatUsage>,
): Promise<number | undefined> {
  if (deps.cost?.settles !== true) return undefined;
  try {
    const cost = (await usage()).totalTokens;
    return await settleChat(
      deps.upstreams.token,
      { userId, chargeId, cost },
      deps.onQuota,
      traceCallOptions(deps.trace),
    );
  } catch (err) {
    deps.logger.error(
      { ...traceLogFields(deps.trace), err },
      "settling the charge failed: the reservation stays",
    );
    return undefined;
  }
}

/** Gives a charge back after the model failed; a failed refund is logged, not thrown. */
export async function refund(deps: ChatDeps, userId: string, chargeId: string): Promise<void> {
  if (deps.refunder !== undefined) return deps.refunder.refund(userId, chargeId, deps.trace);
  const fields = traceLogFields(deps.trace);
  try {
    const { refunded } = await retryOnceIfUnavailable(() =>
      deps.upstreams.token.refund({ userId, chargeId }, traceCallOptions(deps.trace)),
    );
    deps.refunds?.inc({ result: "ok" });
    deps.logger.info({ ...fields, refunded: Number(refunded) }, "charge refunded");
  } catch (err) {
    deps.refunds?.inc({ result: "failed" });
    deps.logger.error({ ...fields, err }, "refund failed: the charge stays");
  }
}

/**
 * A failed upstream call as the caller is answered, logged in the request's
 * trace. A refusal answered with a 4xx (a blocked text, the quota spent) is
 * the chain working: an info line with its code and words; anything else a
 * warning with the error and its stack.
 */
export function failedCall(
  logger: FastifyBaseLogger,
  stage: Stage,
  err: unknown,
  trace: TraceContext | undefined,
): HttpError {
  const answer = httpErrorFromRpc(stage, err);
  if (answer.status < 500) {
    const { code, rawMessage } = ConnectError.from(err);
    logger.info(
      { ...traceLogFields(trace), stage, code: Code[code], reason: rawMessage },
      `${stage} refused the chat`,
    );
  } else {
    logger.warn({ ...traceLogFields(trace), err, stage }, `${stage} call failed`);
  }
  return answer;
}
