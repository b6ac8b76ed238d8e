import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { Registry } from "prom-client";
import { QuotaExceededSchema, QuotaNotChargedSchema } from "../../../gen/chat/v1/errors_pb.js";
import type { TokenService } from "../../../gen/chat/v1/token_pb.js";
import type { Logger } from "../../lib/logger.js";
import { counter } from "../../lib/metrics.js";
import { type TraceContext, traceLogFields, traceOf } from "../../lib/trace.js";
import { requireKeyField, requireUserId } from "../../lib/user-id.js";
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

/**
 * The store's outage as the RPC error callers may retry; anything else as
 * INTERNAL. A charge the store never ran says so (QuotaNotCharged), so that
 * the caller has nothing to refund.
 */
function storeFailure(err: unknown, charging = false): ConnectError {
  if (err instanceof QuotaStoreUnavailableError) {
    const details = charging && !err.mayHaveRun ? [{ desc: QuotaNotChargedSchema, value: {} }] : [];
    return new ConnectError("quota store unavailable", Code.Unavailable, undefined, details, err);
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

/** Most charges waiting to be taken back at once; past it, new ones are logged and left. */
const maxPendingUndos = 10_000;
/** Tries to take back a charge: at once, then after 1, 2, 4, 8 and 16 s. */
const undoDelaysMs = [0, 1_000, 2_000, 4_000, 8_000, 16_000];

/**
 * Takes back, in the background, a charge whose command timed out while the
 * chat was let through uncharged (QUOTA_FAIL_OPEN). The refund goes on the
 * same connection after the charge, so it runs after it if the charge runs
 * at all; while the store stays away it is tried again, for about 30 s.
 * Its log lines carry the trace of the chat whose charge it is.
 */
function createUndo(
  { store, logger, clock = systemClock }: TokenServiceDeps,
  onRefunded: () => void,
): (userId: string, chargeId: string, trace: TraceContext | undefined) => void {
  let pending = 0;
  return (userId, chargeId, trace) => {
    if (pending >= maxPendingUndos) {
      logger?.error(
        { ...traceLogFields(trace), userId, chargeId },
        "charge of an uncharged chat not taken back: too many",
      );
      return;
    }
    pending++;
    const attempt = (n: number) => {
      store.refund({ userId, chargeId, window: windowAt(clock.now()) }).then(
        (result) => {
          pending--;
          if (result.refunded > 0) {
            onRefunded();
            logger?.info(
              { ...traceLogFields(trace), userId, chargeId, refunded: result.refunded },
              "charge of an uncharged chat taken back",
            );
          }
        },
        (err: unknown) => {
          const delay = undoDelaysMs[n + 1];
          if (delay !== undefined) {
            setTimeout(() => attempt(n + 1), delay).unref();
            return;
          }
          pending--;
          logger?.error(
            { ...traceLogFields(trace), err, userId, chargeId },
            "charge of an uncharged chat not taken back: the quota store stayed unavailable",
          );
        },
      );
    };
    attempt(0);
  };
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
      "Quota charges, rejections, refunds, settlements and chats let through uncharged",
      ["event"],
    );
  const failOpen = deps.failOpen ?? false;
  const undoLater = createUndo(deps, () => events?.inc({ event: "refunded" }));
  return {
    async checkAndInc(req, ctx) {
      requireUserId(req.userId);
      // A store key for its day and the next, as a user id is (the gateway
      // sends a 36-character request id).
      requireKeyField("charge_id", req.chargeId, false);
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
        if (!(failOpen && err instanceof QuotaStoreUnavailableError)) throw storeFailure(err, true);
        // A charge sent that timed out may still be made when the store comes
        // back: it is taken back, so the chat stays uncharged as answered.
        if (err.mayHaveRun && req.chargeId !== "")
          undoLater(req.userId, req.chargeId, traceOf(ctx));
        // Answered OK, so the RPC metrics cannot tell these chats apart, nor /readyz the outage.
        events?.inc({ event: "unmetered" });
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
        cost: BigInt(result.repeated ? result.cost : cost),
        resetTime,
      };
    },

    async refund(req) {
      requireUserId(req.userId);
      requireKeyField("charge_id", req.chargeId);
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
      requireKeyField("charge_id", req.chargeId);
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
