import { timestampDate } from "@bufbuild/protobuf/wkt";
import { type CallOptions, type Client, Code, ConnectError } from "@connectrpc/connect";
import { QuotaExceededSchema, QuotaNotChargedSchema } from "../../gen/chat/v1/errors_pb.js";
import type { CheckAndIncResponse, TokenService } from "../../gen/chat/v1/token_pb.js";
import { causesOf } from "../lib/causes.js";

/** A user's quota as the RateLimit headers tell it. */
export interface QuotaState {
  readonly limit: number;
  /** What is left now (never below 0). */
  readonly remaining: number;
  readonly resetAt: Date;
}

/** The system calls of opening a connection: one that failed there sent no request. */
const connecting = new Set(["connect", "getaddrinfo"]);

/**
 * Whether a call failed before its connection was open (refused, no route,
 * a name that does not resolve), found on the error or its causes: the
 * service never saw the request, so it charged nothing.
 */
function neverSent(err: unknown): boolean {
  for (const at of causesOf(err)) {
    if (connecting.has((at as NodeJS.ErrnoException).syscall ?? "")) return true;
  }
  return false;
}

/**
 * Whether a failed call is known to have charged nothing: it never reached
 * the token service, or the service says its quota store never ran the
 * charge (QuotaNotCharged, on UNAVAILABLE while Redis is down).
 */
export function chargedNothing(err: unknown): boolean {
  return neverSent(err) || ConnectError.from(err).findDetails(QuotaNotChargedSchema).length > 0;
}

/**
 * Runs `call`, and once more when it fails with UNAVAILABLE (the token
 * service or its store was briefly unreachable). Only for idempotent calls:
 * reads, and charges and refunds that carry a charge id. When the retry is
 * known to have charged nothing, the first call's failure is thrown: that
 * one may have charged, and its outcome is what the caller must allow for.
 */
export async function retryOnceIfUnavailable<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (ConnectError.from(err).code !== Code.Unavailable) throw err;
    try {
      return await call();
    } catch (again) {
      throw chargedNothing(again) && !chargedNothing(err) ? err : again;
    }
  }
}

/**
 * Charges one chat to the user's quota under `chargeId` (the request id), so
 * a retry charges once. Reports the quota after it to `onQuota`, on success
 * and on a refusal; an unmetered answer (QUOTA_FAIL_OPEN) reports nothing,
 * since nothing is known of the quota then.
 */
export async function chargeChat(
  token: Client<typeof TokenService>,
  charge: { readonly userId: string; readonly chargeId: string; readonly cost?: bigint },
  callOptions: CallOptions,
  onQuota: (state: QuotaState) => void = () => {},
): Promise<CheckAndIncResponse> {
  try {
    const res = await retryOnceIfUnavailable(() => token.checkAndInc(charge, callOptions));
    if (!res.unmetered && res.resetTime !== undefined) {
      onQuota({
        limit: Number(res.limit),
        remaining: Math.max(0, Number(res.remaining)),
        resetAt: timestampDate(res.resetTime),
      });
    }
    return res;
  } catch (err) {
    const [refused] = ConnectError.from(err).findDetails(QuotaExceededSchema);
    if (refused?.resetTime !== undefined) {
      // The detail tells what would be left after the refused charge; left now is that plus its cost.
      onQuota({
        limit: Number(refused.limit),
        remaining: Math.max(0, Number(refused.remaining + refused.cost)),
        resetAt: timestampDate(refused.resetTime),
      });
    }
    throw err;
  }
}

/**
 * Settles a chat's charge to what it really cost (QUOTA_COST_MODE=tokens)
 * and reports the quota after it to `onQuota`. Resolves with what is left,
 * or undefined when the charge was not settled (refunded, unknown, or
 * unmetered); a failure is thrown to the caller, who keeps the reservation.
 */
export async function settleChat(
  token: Client<typeof TokenService>,
  charge: { readonly userId: string; readonly chargeId: string; readonly cost: number },
  onQuota: (state: QuotaState) => void = () => {},
  callOptions: CallOptions = {},
): Promise<number | undefined> {
  const res = await retryOnceIfUnavailable(() =>
    token.settle({ ...charge, cost: BigInt(charge.cost) }, callOptions),
  );
  if (!res.settled) return undefined;
  if (res.resetTime !== undefined) {
    onQuota({
      limit: Number(res.limit),
      remaining: Number(res.remaining),
      resetAt: timestampDate(res.resetTime),
    });
  }
  return Number(res.remaining);
}

/** The names of the headers rateLimitHeaders sets, as a reply keeps them (lower case). */
export const rateLimitHeaderNames = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];

/** The RateLimit-Limit, -Remaining and -Reset (seconds to go) headers of a quota. */
export function rateLimitHeaders(state: QuotaState, now = new Date()): Record<string, string> {
  const reset = Math.max(0, Math.ceil((state.resetAt.getTime() - now.getTime()) / 1000));
  return {
    "RateLimit-Limit": String(state.limit),
    "RateLimit-Remaining": String(state.remaining),
    "RateLimit-Reset": String(reset),
  };
}
