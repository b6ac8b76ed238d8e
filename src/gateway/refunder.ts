import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { FastifyBaseLogger } from "fastify";
import type { TokenService } from "../../gen/chat/v1/token_pb.js";
import type { LabeledCounter as Counter } from "../lib/metrics.js";
import { type TraceContext, traceCallOptions, traceLogFields } from "../lib/trace.js";
import { chargedNothing, retryOnceIfUnavailable } from "./quota.js";

/** Gives charges back, retrying in the background while the token service is away. */
export interface Refunder {
  /**
   * Refunds now; when that fails, keeps retrying in the background. Every
   * attempt is made, and logged, in `trace` (the chat's).
   */
  refund(userId: string, chargeId: string, trace?: TraceContext): Promise<void>;
  /**
   * For a charge whose outcome is unknown (the token call failed without a
   * verdict: the service may have charged before it died). Refunds in the
   * background; a refund of a charge that was never made changes nothing.
   */
  refundIfCharged(userId: string, chargeId: string, trace?: TraceContext): void;
  /**
   * Keeps retrying the refunds still pending, with their backoff, until they
   * are made or `until` (a time in ms) comes; those left then are logged as
   * failed. Without `until`, only attempts under way are waited for.
   */
  close(until?: number): Promise<void>;
}

export interface RefunderOptions {
  readonly token: Client<typeof TokenService>;
  readonly logger: FastifyBaseLogger;
  /** Counts refunds by result: ok, retried (ok after a background retry), failed (given up). */
  readonly refunds?: Counter<"result">;
  /** How long a failed refund is retried. */
  readonly retryWindowMs?: number;
  /**
   * Wait before the refund of an unknown outcome, so that a charge still on
   * its way (the call's deadline) lands before it is given back.
   */
  readonly settleMs?: number;
  /** Most refunds kept for a later attempt (defaultMaxPending when absent). */
  readonly maxPending?: number;
}

/**
 * Most refunds waiting for a later attempt. Each retries on its own: with
 * the token service away for the whole retry window, an unbounded set would
 * grow with the traffic (a chat a refund) and its attempts with it, a storm
 * against a service coming back. Ten thousand is minutes of failures at
 * tens of chats a second; past it a refund is given up at once, counted and
 * logged as failed.
 */
export const defaultMaxPending = 10_000;

const firstDelayMs = 250;
const maxDelayMs = 5_000;

/**
 * The token call ended without a verdict. Refused calls (quota, bad input)
 * charged nothing, nor did one that never reached the service or whose
 * quota store never ran the charge (Redis down): a refund of it would be
 * retried for the whole retry window while the service or its store is
 * down, then logged as a charge kept.
 */
export function chargeOutcomeUnknown(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code !== Code.ResourceExhausted && code !== Code.InvalidArgument && !chargedNothing(err);
}

/**
 * Makes the gateway's refunder. Refund is idempotent per charge id (the
 * token service gives a charge back once), so retrying is always safe; this
 * is what keeps the quota exact when the token service or its store dies
 * between charging and answering.
 */
export function createRefunder(options: RefunderOptions): Refunder {
  const { token, logger, refunds } = options;
  const retryWindowMs = options.retryWindowMs ?? 300_000;
  const settleMs = options.settleMs ?? 2_000;
  const maxPending = options.maxPending ?? defaultMaxPending;
  /** Refunds waiting for their next attempt, by the timer that makes it. */
  const waiting = new Map<NodeJS.Timeout, PendingRefund>();
  /** Background attempts under way. */
  const attempts = new Set<Promise<void>>();
  /** Once closing: when retries stop, the shutdown's time being up. */
  let closeBy = Number.POSITIVE_INFINITY;

  const attempt = async ({ userId, chargeId, trace }: Charge) => {
    const { refunded } = await retryOnceIfUnavailable(() =>
      token.refund({ userId, chargeId }, traceCallOptions(trace)),
    );
    return Number(refunded);
  };
  const madeLater = (refund: PendingRefund, refunded: number) => {
    if (refunded === 0) return;
    refunds?.inc({ result: "retried" });
    logger.info(
      { ...traceLogFields(refund.trace), refunded, chargeId: refund.chargeId },
      "charge refunded in the background",
    );
  };
  const givenUp = (refund: PendingRefund, err: unknown, why: string) => {
    refunds?.inc({ result: "failed" });
    logger.error({ ...traceLogFields(refund.trace), err, chargeId: refund.chargeId }, why);
  };

  /** Schedules the next attempt of `refund`; a new one (not a retry) only while there is room. */
  const later = (refund: PendingRefund, err?: unknown, retry = false) => {
    if (refund.due >= closeBy) {
      return givenUp(refund, err, "refund failed at shutdown: the charge stays");
    }
    if (!retry && waiting.size + attempts.size >= maxPending) {
      return givenUp(
        refund,
        err,
        `refund failed: ${maxPending} refunds are pending already; the charge stays`,
      );
    }
    const timer = setTimeout(() => {
      waiting.delete(timer);
      const work = attempt(refund).then(
        (refunded) => madeLater(refund, refunded),
        (err: unknown) => {
          if (Date.now() + refund.delayMs > refund.deadline) {
            return givenUp(refund, err, "refund failed: the charge stays");
          }
          const delayMs = Math.min(refund.delayMs * 2, maxDelayMs);
          later({ ...refund, due: Date.now() + delayMs, delayMs }, err, true);
        },
      );
      attempts.add(work);
      void work.finally(() => attempts.delete(work));
    }, refund.delayMs);
    timer.unref();
    waiting.set(timer, refund);
  };
  const pending = (
    userId: string,
    chargeId: string,
    trace: TraceContext | undefined,
    delayMs: number,
  ): PendingRefund => ({
    userId,
    chargeId,
    trace,
    due: Date.now() + delayMs,
    delayMs,
    deadline: Date.now() + retryWindowMs,
  });

  return {
    async refund(userId, chargeId, trace) {
      try {
        const refunded = await attempt({ userId, chargeId, trace });
        refunds?.inc({ result: "ok" });
        logger.info({ ...traceLogFields(trace), refunded }, "charge refunded");
      } catch (err) {
        logger.warn({ ...traceLogFields(trace), err }, "refund failed: retrying in the background");
        later(pending(userId, chargeId, trace, firstDelayMs));
      }
    },
    refundIfCharged(userId, chargeId, trace) {
      later(pending(userId, chargeId, trace, settleMs));
    },
    async close(until = 0) {
      // The retries go on, on their timers, while the shutdown allows.
      closeBy = until;
      for (const [timer, refund] of waiting) {
        if (refund.due < until) continue;
        clearTimeout(timer);
        waiting.delete(timer);
        givenUp(refund, undefined, "refund failed at shutdown: the charge stays");
      }
      // The timers do not hold the process open: this wait does.
      while (waiting.size > 0 || attempts.size > 0) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
  };
}

/** A charge to give back, and the trace to do it in. */
interface Charge {
  readonly userId: string;
  readonly chargeId: string;
  readonly trace: TraceContext | undefined;
}

/** A refund to make later, and when. */
interface PendingRefund extends Charge {
  /** When the next attempt is due (ms). */
  readonly due: number;
  /** The wait before it; doubles after each failure, up to maxDelayMs. */
  readonly delayMs: number;
  /** When retrying stops (the retry window). */
  readonly deadline: number;
}
