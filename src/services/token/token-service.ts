import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { Registry } from "prom-client";
import { QuotaExceededSchema } from "../../../gen/chat/v1/errors_pb.js";
import type { TokenService } from "../../../gen/chat/v1/token_pb.js";
import type { Logger } from "../../lib/logger.js";
import { counter } from "../../lib/metrics.js";
import { traceLogFields, traceOf } from "../../lib/trace.js";
import { type Clock, systemClock, windowAt } from "./clock.js";
import { type QuotaStore, QuotaStoreUnavailableError } from "./quota-store.js";

export interface TokenServiceDeps {
  readonly store: QuotaStore;
  /** Tokens each user may spend per UTC day (QUOTA_LIMIT). */
  readonly limit: number;
  /** What a charge costs when the request names no cost (QUOTA_COST). */
  readonly defaultCost: number;
  readonly clock?: Clock;
  /** Where to count charges, rejections and refunds; none when absent. */
  readonly registry?: Registry;
  /**
   * QUOTA_FAIL_OPEN: while the store is unavailable, let CheckAndInc through
   * uncharged (flagged `unmetered`) instead of failing with UNAVAILABLE.
   */
  readonly failOpen?: boolean;
  readonly logger?: Logger;
}

function requireUserId(userId: string): void {
  if (userId === "") {
    throw new ConnectError("user_id is required", Code.InvalidArgument);
  }
}

/** The store's outage as the RPC error callers may retry; anything else as INTERNAL. */
function storeFailure(err: unknown): ConnectError {
  if (err instanceof QuotaStoreUnavailableError) {
    return new ConnectError("quota store unavailable", Code.Unavailable, undefined, undefined, err);
  }
  return new ConnectError("quota store failed", Code.Internal, undefined, undefined, err);
}

async function fromStore<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw storeFailure(err);
  }
}

/** chat.v1.TokenService: a daily quota per user over a QuotaStore. */
export function createTokenService(deps: TokenServiceDeps): ServiceImpl<typeof TokenService> {
  const { store, limit, defaultCost, logger } = deps;
  const clock = deps.clock ?? systemClock;
  const events =
    deps.registry &&
    counter(
      deps.registry,
      "chatmesh_quota_events_total",
      "Quota charges, rejections, refunds and settlements",
      ["event"],
    );
  const failOpen = deps.failOpen ?? false;
  return {
    async checkAndInc(req, ctx) {
      requireUserId(req.userId);
      if (req.cost < 0n || req.cost > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new ConnectError("cost must be from 0 to 2^53-1", Code.InvalidArgument);
      }
      const cost = req.cost === 0n ? defaultCost : Number(req.cost);
      const window = windowAt(clock.now());
      const resetTime = timestampFromDate(window.resetAt);
      let result: Awaited<ReturnType<QuotaStore["charge"]>>;
      try {
        result = await store.charge({
          userId: req.userId,
          window,
          cost,
          limit,
          chargeId: req.chargeId,
        });
      } catch (err) {
        if (!(failOpen && err instanceof QuotaStoreUnavailableError)) throw storeFailure(err);
        logger?.warn(
          { ...traceLogFields(traceOf(ctx)), err, userId: req.userId, chargeId: req.chargeId },
          "quota store unavailable: chat let through uncharged (QUOTA_FAIL_OPEN)",
        );
        return {
          remaining: BigInt(limit),
          limit: BigInt(limit),
          cost: 0n,
          resetTime,
          unmetered: true,
        };
      }
      if (!result.allowed) {
        events?.inc({ event: "rejected" });
        const remaining = BigInt(limit - result.used - cost);
        throw new ConnectError("quota exceeded", Code.ResourceExhausted, undefined, [
          {
            desc: QuotaExceededSchema,
            value: { remaining, limit: BigInt(limit), cost: BigInt(cost), resetTime },
          },
        ]);
      }
      // A retry of a charge made already is counted apart: nothing was charged.
      events?.inc({ event: result.repeated ? "repeated" : "charged" });
      return {
        remaining: BigInt(limit - result.used),
        limit: BigInt(limit),
        cost: BigInt(cost),
        resetTime,
      };
    },

    async refund(req) {
      requireUserId(req.userId);
      if (req.chargeId === "") {
        throw new ConnectError("charge_id is required", Code.InvalidArgument);
      }
      const window = windowAt(clock.now());
      const result = await fromStore(() =>
        store.refund({ userId: req.userId, chargeId: req.chargeId, window }),
      );
      if (result.refunded > 0) events?.inc({ event: "refunded" });
      return {
        refunded: BigInt(result.refunded),
        remaining: BigInt(Math.max(0, limit - result.used)),
      };
    },

    async settle(req) {
      requireUserId(req.userId);
      if (req.chargeId === "") {
        throw new ConnectError("charge_id is required", Code.InvalidArgument);
      }
      if (req.cost < 0n || req.cost > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new ConnectError("cost must be from 0 to 2^53-1", Code.InvalidArgument);
      }
      const window = windowAt(clock.now());
      const result = await fromStore(() =>
        store.settle({
          userId: req.userId,
          chargeId: req.chargeId,
          cost: Number(req.cost),
          window,
        }),
      );
      if (result.settled) events?.inc({ event: "settled" });
      return {
        settled: result.settled,
        remaining: BigInt(Math.max(0, limit - result.used)),
        limit: BigInt(limit),
        cost: result.settled ? req.cost : 0n,
        resetTime: timestampFromDate(window.resetAt),
      };
    },

    async getQuota(req) {
      requireUserId(req.userId);
      const window = windowAt(clock.now());
      const used = await fromStore(() => store.get({ userId: req.userId, window }));
      return {
        used: BigInt(used),
        remaining: BigInt(Math.max(0, limit - used)),
        limit: BigInt(limit),
        resetTime: timestampFromDate(window.resetAt),
      };
    },
  };
}
