import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { FastifyBaseLogger } from "fastify";
import type { TokenService } from "../../gen/chat/v1/token_pb.js";
import type { LabeledCounter as Counter } from "../lib/metrics.js";
import { type TraceContext, traceCallOptions, traceLogFields } from "../lib/trace.js";
import { retryOnceIfUnavailable } from "./quota.js";

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
  /** Stops retrying. */
  close(): void;
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
}

const firstDelayMs = 250;
const maxDelayMs = 5_000;

/** The token call ended without a verdict: refused calls (quota, bad input) charged nothing. */
export function chargeOutcomeUnknown(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code !== Code.ResourceExhausted && code !== Code.InvalidArgument;
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
  const timers = new Set<NodeJS.Timeout>();
  let closed = false;

  const attempt = async (userId: string, chargeId: string, trace: TraceContext | undefined) => {
    const { refunded } = await retryOnceIfUnavailable(() =>
      token.refund({ userId, chargeId }, traceCallOptions(trace)),
    );
    return Number(refunded);
  };

  const later = (
    userId: string,
    chargeId: string,
    trace: TraceContext | undefined,
    delayMs: number,
    deadline: number,
  ) => {
    if (closed) return;
    const timer = setTimeout(async () => {
      timers.delete(timer);
      try {
        const refunded = await attempt(userId, chargeId, trace);
        if (refunded > 0) {
          refunds?.inc({ result: "retried" });
          logger.info(
            { ...traceLogFields(trace), refunded, chargeId },
            "charge refunded in the background",
          );
        }
      } catch (err) {
        if (Date.now() + delayMs > deadline) {
          refunds?.inc({ result: "failed" });
          logger.error(
            { ...traceLogFields(trace), err, chargeId },
            "refund failed: the charge stays",
          );
          return;
        }
        later(userId, chargeId, trace, Math.min(delayMs * 2, maxDelayMs), deadline);
      }
    }, delayMs);
    timer.unref();
    timers.add(timer);
  };

  return {
    async refund(userId, chargeId, trace) {
      try {
        const refunded = await attempt(userId, chargeId, trace);
        refunds?.inc({ result: "ok" });
        logger.info({ ...traceLogFields(trace), refunded }, "charge refunded");
      } catch (err) {
        logger.warn({ ...traceLogFields(trace), err }, "refund failed: retrying in the background");
        later(userId, chargeId, trace, firstDelayMs, Date.now() + retryWindowMs);
      }
    },
    refundIfCharged(userId, chargeId, trace) {
      later(userId, chargeId, trace, settleMs, Date.now() + retryWindowMs);
    },
    close() {
      closed = true;
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
    },
  };
}
