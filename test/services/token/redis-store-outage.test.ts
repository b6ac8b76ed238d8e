import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { windowAt } from "../../../src/services/token/clock.js";
import { QuotaStoreUnavailableError } from "../../../src/services/token/quota-store.js";
import {
  createRedisQuotaStore,
  type RedisQuotaStore,
} from "../../../src/services/token/redis-store.js";
import { type OwnRedis, redisServerOrSkip, startOwnRedis } from "../../fixtures/redis.js";

const available = redisServerOrSkip();

/** Retries `call` until it resolves, for at most `timeoutMs`. */
async function eventually<T>(call: () => Promise<T>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

describe.runIf(available)("redis quota store when its own Redis fails", () => {
  let redis: OwnRedis;
  let store: RedisQuotaStore;
  const window = windowAt(new Date());
  const charge = (chargeId: string) =>
    store.charge({ userId: "u", window, cost: 50, limit: 200, chargeId });

  beforeAll(async () => {
    redis = await startOwnRedis();
    store = createRedisQuotaStore({ url: redis.url, commandTimeoutMs: 500 });
    await store.connected();
  });
  afterAll(async () => {
    await store?.close();
    await redis?.kill();
  });

  it("fails within the command timeout while Redis hangs, and works once it answers", async () => {
    expect(await charge("before-hang")).toEqual({ allowed: true, used: 50 });
    redis.child().kill("SIGSTOP");
    try {
      const started = Date.now();
      await expect(charge("during-hang")).rejects.toBeInstanceOf(QuotaStoreUnavailableError);
      const took = Date.now() - started;
      expect(took).toBeGreaterThanOrEqual(400);
      expect(took).toBeLessThan(2_000);
    } finally {
      redis.child().kill("SIGCONT");
    }
    // The timed-out charge may have run once Redis woke: the same id never charges twice.
    const retried = await eventually(() => charge("during-hang"));
    // (`repeated` says which happened; either way 100 is used.)
    expect({ allowed: retried.allowed, used: retried.used }).toEqual({ allowed: true, used: 100 });
  });

  it("fails fast while Redis is dead, and recovers by itself when it is back", async () => {
    await redis.kill();
    const started = Date.now();
    await expect(charge("dead")).rejects.toBeInstanceOf(QuotaStoreUnavailableError);
    await expect(store.ping()).rejects.toBeInstanceOf(QuotaStoreUnavailableError);
    expect(Date.now() - started).toBeLessThan(1_000);

    await redis.restart();
    // The restarted Redis is empty: the day starts again from 0.
    await eventually(() => store.ping());
    expect(await charge("after")).toEqual({ allowed: true, used: 50 });
  });
});
