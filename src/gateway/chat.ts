import type { FastifyBaseLogger } from "fastify";
import type { Counter } from "prom-client";
import { badRequest, type HttpError, httpErrorFromRpc } from "./errors.js";
import type { HistoryRecorder } from "./history-recorder.js";
import { chargeChat, type QuotaState, retryOnceIfUnavailable } from "./quota.js";
import { chargeOutcomeUnknown, type Refunder } from "./refunder.js";
import { isUserId } from "./request-guards.js";
import type { Upstreams } from "./upstreams.js";

/** A valid chat request. */
export interface ChatInput {
  readonly userId: string;
  readonly text: string;
}

/** The contract's 200 body of POST /chat. */
export interface ChatOutput {
  readonly cleaned: string;
  readonly reply: string;
  readonly remaining: number;
}

function codePointsOver(text: string, max: number): boolean {
  // UTF-16 length bounds the code point count from above: most texts need no count.
  if (text.length <= max) return false;
  let count = 0;
  for (const _ of text) {
    if (++count > max) return true;
  }
  return false;
}

/** Checks a parsed JSON body against the contract; an HttpError says what is wrong. */
export function parseChatInput(body: unknown, maxTextChars: number): ChatInput | HttpError {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return badRequest("bad json or missing user_id");
  }
  const { user_id: userId, text } = body as Record<string, unknown>;
  if (!isUserId(userId)) return badRequest("bad json or missing user_id");
  if (typeof text !== "string" || text === "") return badRequest("text is required");
  if (codePointsOver(text, maxTextChars)) return badRequest("text too long");
  return { userId, text };
}

export interface ChatDeps {
  readonly upstreams: Upstreams;
  readonly logger: FastifyBaseLogger;
  /** Counts refunds after LLM failures, by result. */
  readonly refunds?: Counter<"result">;
  /** Told the user's quota once the charge is answered (for the RateLimit headers). */
  readonly onQuota?: (state: QuotaState) => void;
  /** Keeps each successful chat; it never throws, fails or delays the chat. */
  readonly history?: HistoryRecorder;
  /** Gives charges back, retrying in the background; without it one refund is tried. */
  readonly refunder?: Refunder;
}

/**
 * Runs one chat through Filter → Token → LLM. The request id is the charge
 * id, so the charge can be refunded when the model fails.
 */
export async function runChat(
  deps: ChatDeps,
  input: ChatInput,
  requestId: string,
): Promise<ChatOutput | HttpError> {
  const { upstreams, logger } = deps;

  let cleaned: string;
  try {
    ({ cleaned } = await upstreams.filter.filter({ text: input.text }));
  } catch (err) {
    return httpErrorFromRpc("filter", logFailure(logger, "filter", err));
  }

  let remaining: bigint;
  try {
    ({ remaining } = await chargeChat(
      upstreams.token,
      { userId: input.userId, chargeId: requestId },
      {},
      deps.onQuota,
    ));
  } catch (err) {
    // The service may have charged before it failed to answer: give it back if so.
    if (chargeOutcomeUnknown(err)) deps.refunder?.refundIfCharged(input.userId, requestId);
    return httpErrorFromRpc("token", logFailure(logger, "token", err));
  }

  let reply: string;
  try {
    ({ reply } = await upstreams.llm.generate({ text: cleaned, userId: input.userId }));
  } catch (err) {
    logFailure(logger, "llm", err);
    await refund(deps, input.userId, requestId);
    return httpErrorFromRpc("llm", err);
  }
  deps.history?.record({
    userId: input.userId,
    text: cleaned,
    reply,
    createdAt: new Date(),
    requestId,
  });
  return { cleaned, reply, remaining: Number(remaining) };
}

async function refund(deps: ChatDeps, userId: string, chargeId: string): Promise<void> {
  if (deps.refunder !== undefined) return deps.refunder.refund(userId, chargeId);
  try {
    const { refunded } = await retryOnceIfUnavailable(() =>
      deps.upstreams.token.refund({ userId, chargeId }),
    );
    deps.refunds?.inc({ result: "ok" });
    deps.logger.info({ refunded: Number(refunded) }, "charge refunded after llm failure");
  } catch (err) {
    deps.refunds?.inc({ result: "failed" });
    deps.logger.error({ err }, "refund failed: the charge stays");
  }
}

function logFailure(logger: FastifyBaseLogger, stage: string, err: unknown): unknown {
  logger.warn({ err, stage }, `${stage} call failed`);
  return err;
}
