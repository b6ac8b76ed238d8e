import { Redis } from "ioredis";
import type { Logger } from "../../lib/logger.js";
import { previousWindow, type QuotaWindow } from "./clock.js";
import {
  type ChargeInput,
  type ChargeResult,
  type PeekInput,
  type QuotaStore,
  QuotaStoreUnavailableError,
  type RefundInput,
  type RefundResult,
  type SettleInput,
  type SettleResult,
} from "./quota-store.js";
import { chargeScript, refundScript, settleScript } from "./redis-scripts.js";

export interface RedisQuotaStoreOptions {
  /** `redis://[user:pass@]host:port[/db]` or `rediss://…` (REDIS_URL). */
  readonly url: string;
  /** Put before every key, so that several deployments can share one Redis. */
  readonly keyPrefix?: string;
  /** How long one command may take before it fails as unavailable. */
  readonly commandTimeoutMs?: number;
  /** How long keys outlive the end of their day: room for clock skew and late refunds. */
  readonly expiryMarginSeconds?: number;
  readonly logger?: Logger;
}

/** The Redis quota store, plus what the token process's /readyz checks. */
export interface RedisQuotaStore extends QuotaStore {
  /**
   * Resolves when Redis takes a write, as charges need it to; rejects at once
   * while it is unreachable, and with Redis's reason while it refuses writes
   * (out of memory, a read-only replica) or refused the connection's setup
   * (the database REDIS_URL names).
   */
  ping(): Promise<void>;
  /** Resolves once connected (at once if already); rejects after `timeoutMs`. */
  connected(timeoutMs?: number): Promise<void>;
}

/**
 * Redis's refusals while it cannot run commands or take writes for now: out
 * of memory, a replica (after a failover), a failed snapshot that stops
 * writes, too few replicas for min-replicas-to-write, a script or a load
 * running, a cluster or its master down.
 */
const unavailableNow =
  /^(OOM|READONLY|MISCONF|NOREPLICAS|BUSY|LOADING|MASTERDOWN|TRYAGAIN|CLUSTERDOWN)\b/;

/** The key names of the store (exported for tests and operators). */
export function quotaKeys(prefix: string, userId: string, window: QuotaWindow) {
  // Encoding keeps ids free of ':', '{' and '}', so no two users' keys can collide
  // and the hash tag is always exactly the user.
  const base = `${prefix}{${encodeURIComponent(userId)}}:${window.day}`;
  return {
    counter: base,
    charge: (chargeId: string) => `${base}:charge:${encodeURIComponent(chargeId)}`,
  };
}

/** The scripts' replies: integers, as decimal strings (`stringNumbers`). */
interface ScriptCommands {
  quotaCharge(...args: (string | number)[]): Promise<[string, string, string?, string?]>;
  quotaRefund(...args: (string | number)[]): Promise<[string, string]>;
  quotaSettle(...args: (string | number)[]): Promise<[string, string]>;
}

/**
 * The quota store on Redis: exact across any number of token replicas.
 * Check-and-charge, refund and settle are each one Lua script (one round trip,
 * atomic on the server). Keys are per user per UTC day and expire at the end
 * of the day plus a margin. While Redis is unreachable every call fails at
 * once with QuotaStoreUnavailableError (no offline queue, no retries, a short
 * command timeout), and the client reconnects by itself with a capped backoff,
 * also when its connection only falls silent.
 */
export function createRedisQuotaStore(options: RedisQuotaStoreOptions): RedisQuotaStore {
  const prefix = options.keyPrefix ?? "chatmesh:quota:";
  const margin = options.expiryMarginSeconds ?? 3_600;
  const logger = options.logger;
  const commandTimeout = options.commandTimeoutMs ?? 500;
  const redis = new Redis(options.url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    // Integer replies as decimal strings: ioredis's own reading of them is
    // off by one or two near 2^53, within the limits QUOTA_LIMIT takes.
    stringNumbers: true,
    commandTimeout,
    // A connection that stays silent this long with commands waiting is
    // dropped and a new one made: after a partition or a failover behind the
    // same address, the old socket is never closed, and every call would
    // time out on it until the kernel gave up on it (~15 minutes).
    socketTimeout: Math.max(1_000, 4 * commandTimeout),
    connectTimeout: 2_000,
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 6), 2_000),
    scripts: {
      quotaCharge: { lua: chargeScript, numberOfKeys: 3 },
      quotaRefund: { lua: refundScript, numberOfKeys: 4 },
      quotaSettle: { lua: settleScript, numberOfKeys: 4 },
    },
  });
  const scripts = redis as unknown as ScriptCommands;

  // Log each change of state once, not every reconnect attempt.
  let down = false;
  /** Redis's answer to the connection's setup (SELECT of REDIS_URL's database), when it refused it. */
  let setupRefused: string | undefined;
  redis.on("connect", () => {
    setupRefused = undefined;
  });
  redis.on("error", (err: Error) => {
    if (err.name === "ReplyError") {
      // Only the setup's commands report here: calls made on a wrong database would mix quotas.
      setupRefused = err.message;
      logger?.error(
        { err: err.message },
        "redis refused the connection's setup: quota calls fail (check REDIS_URL's database)",
      );
      return;
    }
    if (down) return;
    down = true;
    logger?.error({ err: err.message }, "redis unreachable: quota calls fail until it is back");
  });
  redis.on("ready", () => {
    if (down) logger?.info("redis reachable again");
    down = false;
  });

  /** The last refusal logged, so that a refusing Redis is logged once, not per call. */
  let refusing: string | undefined;
  const run = async <T>(call: () => Promise<T>): Promise<T> => {
    if (setupRefused !== undefined) {
      throw new QuotaStoreUnavailableError(`redis refused the connection: ${setupRefused}`);
    }
    try {
      const result = await call();
      if (refusing !== undefined) {
        refusing = undefined;
        logger?.info("redis takes quota commands again");
      }
      return result;
    } catch (err) {
      // A reply error is Redis refusing the command (out of memory, read-only,
      // a bug), and says why in the log. Refusals of a Redis that cannot take
      // writes for now are an outage (QUOTA_FAIL_OPEN lets chats through);
      // anything else fails the call as it is.
      if (err instanceof Error && err.name === "ReplyError") {
        // The same refusal from a script names the script: one line for both.
        const reason = err.message.replace(/ script: .*$/s, "");
        if (refusing !== reason) {
          refusing = reason;
          logger?.error({ err: reason }, "redis refuses quota commands");
        }
        if (!unavailableNow.test(reason)) throw err;
        // Refused before it wrote anything: a script fails at its first write.
        throw new QuotaStoreUnavailableError(reason, { cause: err, mayHaveRun: false });
      }
      // Without an offline queue, a command made while disconnected is
      // refused before it is sent; any other failure may come after.
      const unsent = err instanceof Error && err.message.includes("isn't writeable");
      throw new QuotaStoreUnavailableError("quota store unavailable", {
        cause: err,
        mayHaveRun: !unsent,
      });
    }
  };
  const expireAt = (window: QuotaWindow) => Math.ceil(window.resetAt.getTime() / 1000) + margin;

  return {
    async charge(input: ChargeInput): Promise<ChargeResult> {
      const keys = quotaKeys(prefix, input.userId, input.window);
      const before = quotaKeys(prefix, input.userId, previousWindow(input.window));
      const [allowed, used, repeated, cost] = await run(() =>
        scripts.quotaCharge(
          keys.counter,
          keys.charge(input.chargeId),
          before.charge(input.chargeId),
          input.cost,
          input.limit,
          expireAt(input.window),
          input.chargeId === "" ? "0" : "1",
        ),
      );
      return repeated === "1"
        ? { allowed: true, used: Number(used), repeated: true, cost: Number(cost) }
        : { allowed: allowed === "1", used: Number(used) };
    },

    async refund(input: RefundInput): Promise<RefundResult> {
      const today = quotaKeys(prefix, input.userId, input.window);
      const before = quotaKeys(prefix, input.userId, previousWindow(input.window));
      const [refunded, used] = await run(() =>
        scripts.quotaRefund(
          today.charge(input.chargeId),
          today.counter,
          before.charge(input.chargeId),
          before.counter,
          expireAt(input.window),
        ),
      );
      return { refunded: Number(refunded), used: Number(used) };
    },

    async settle(input: SettleInput): Promise<SettleResult> {
      const today = quotaKeys(prefix, input.userId, input.window);
      const before = quotaKeys(prefix, input.userId, previousWindow(input.window));
      const [settled, used] = await run(() =>
        scripts.quotaSettle(
          today.charge(input.chargeId),
          today.counter,
          before.charge(input.chargeId),
          before.counter,
          input.cost,
        ),
      );
      return { settled: settled === "1", used: Number(used) };
    },

    async get(input: PeekInput): Promise<number> {
      const used = await run(() =>
        redis.get(quotaKeys(prefix, input.userId, input.window).counter),
      );
      return used === null ? 0 : Number(used);
    },

    async ping(): Promise<void> {
      await run(() => redis.set(`${prefix}readyz`, "1", "PX", 60_000));
    },

    connected(timeoutMs = 5_000): Promise<void> {
      if (redis.status === "ready") return Promise.resolve();
      return new Promise((resolve, reject) => {
        const onReady = () => {
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          redis.off("ready", onReady);
          reject(new QuotaStoreUnavailableError(`redis not connected after ${timeoutMs} ms`));
        }, timeoutMs);
        redis.once("ready", onReady);
      });
    },

    async close(): Promise<void> {
      redis.disconnect();
    },
  };
}
