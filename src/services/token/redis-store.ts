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
  /** Resolves when Redis answers PING, rejects at once while it is unreachable. */
  ping(): Promise<void>;
  /** Resolves once connected (at once if already); rejects after `timeoutMs`. */
  connected(timeoutMs?: number): Promise<void>;
}

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

interface ScriptCommands {
  quotaCharge(...args: (string | number)[]): Promise<[number, number, number?]>;
  quotaRefund(...args: string[]): Promise<[number, number]>;
  quotaSettle(...args: (string | number)[]): Promise<[number, number]>;
}

/**
 * The quota store on Redis: exact across any number of token replicas.
 * Check-and-charge, refund and settle are each one Lua script (one round trip,
 * atomic on the server). Keys are per user per UTC day and expire at the end
 * of the day plus a margin. While Redis is unreachable every call fails at
 * once with QuotaStoreUnavailableError (no offline queue, no retries, a short
 * command timeout), and the client reconnects by itself with a capped backoff.
 */
export function createRedisQuotaStore(options: RedisQuotaStoreOptions): RedisQuotaStore {
  const prefix = options.keyPrefix ?? "chatmesh:quota:";
  const margin = options.expiryMarginSeconds ?? 3_600;
  const logger = options.logger;
  const redis = new Redis(options.url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: options.commandTimeoutMs ?? 500,
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
  redis.on("error", (err: Error) => {
    if (down) return;
    down = true;
    logger?.error({ err: err.message }, "redis unreachable: quota calls fail until it is back");
  });
  redis.on("ready", () => {
    if (down) logger?.info("redis reachable again");
    down = false;
  });

  const run = async <T>(call: () => Promise<T>): Promise<T> => {
    try {
      return await call();
    } catch (err) {
      // A reply error is Redis refusing the command: a bug, not an outage.
      if (err instanceof Error && err.name === "ReplyError") throw err;
      throw new QuotaStoreUnavailableError("quota store unavailable", { cause: err });
    }
  };
  const expireAt = (window: QuotaWindow) => Math.ceil(window.resetAt.getTime() / 1000) + margin;

  return {
    async charge(input: ChargeInput): Promise<ChargeResult> {
      const keys = quotaKeys(prefix, input.userId, input.window);
      const before = quotaKeys(prefix, input.userId, previousWindow(input.window));
      const [allowed, used, repeated] = await run(() =>
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
      return repeated === 1
        ? { allowed: true, used: Number(used), repeated: true }
        : { allowed: allowed === 1, used: Number(used) };
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
      return { settled: settled === 1, used: Number(used) };
    },

    async get(input: PeekInput): Promise<number> {
      const used = await run(() =>
        redis.get(quotaKeys(prefix, input.userId, input.window).counter),
      );
      return used === null ? 0 : Number(used);
    },

    async ping(): Promise<void> {
      await run(() => redis.ping());
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
