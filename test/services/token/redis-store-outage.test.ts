import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { windowAt } from "../../../src/services/token/clock.js";
import { QuotaStoreUnavailableError } from "../../../src/services/token/quota-store.js";
import {
  createRedisQuotaStore,
  type RedisQuotaStore,
} from "../../../src/services/token/redis-store.js";
import { createMemoryLogger } from "../../fixtures/logs.js";
import {
  createTestRedis,
  type OwnRedis,
  redisServerOrSkip,
  startOwnRedis,
} from "../../fixtures/redis.js";
import { type SilentProxy, startSilentProxy } from "../../fixtures/silent-proxy.js";

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

describe.runIf(available)("redis quota store when its connection falls silent", () => {
  let redis: OwnRedis;
  let proxy: SilentProxy;
  beforeAll(async () => {
    redis = await startOwnRedis();
    proxy = await startSilentProxy({ host: "127.0.0.1", port: Number(new URL(redis.url).port) });
  });
  afterAll(async () => {
    await proxy?.close();
    await redis?.kill();
  });
  const window = windowAt(new Date());

  it("drops it and works again over a new one, without a restart", async () => {
    const { logger, lines } = createMemoryLogger();
    const store = createRedisQuotaStore({
      url: `redis://127.0.0.1:${proxy.port}`,
      commandTimeoutMs: 300,
      logger,
    });
    const charge = (chargeId: string) =>
      store.charge({ userId: "silent", window, cost: 50, limit: 1_000, chargeId });
    try {
      await store.connected();
      expect(await charge("before")).toEqual({ allowed: true, used: 50 });
      // A partition: the old connection hears nothing and is never closed.
      proxy.silence();
      const started = Date.now();
      await expect(charge("during")).rejects.toBeInstanceOf(QuotaStoreUnavailableError);
      expect(Date.now() - started).toBeLessThan(1_000);
      const back = await eventually(() => charge("after"), 10_000);
      // The old connection stayed silent: this charge went over a new one.
      expect([back.allowed, back.used, proxy.opened()]).toEqual([true, 100, 2]);
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(lines.map((l) => l.msg)).toEqual(
        expect.arrayContaining([
          "redis unreachable: quota calls fail until it is back",
          "redis reachable again",
        ]),
      );
    } finally {
      await store.close();
    }
  });
});

describe.runIf(available)("redis quota store when its own Redis refuses", () => {
  let redis: OwnRedis;
  beforeAll(async () => {
    redis = await startOwnRedis();
  });
  afterAll(async () => {
    await redis?.kill();
  });
  const window = windowAt(new Date());

  it("is not ready while Redis refuses writes (out of memory), says why once, and recovers", async () => {
    const { logger, lines } = createMemoryLogger();
    const store = createRedisQuotaStore({ url: redis.url, logger });
    const admin = createTestRedis(redis.url);
    try {
      await store.connected();
      await store.ping();
      await admin.config("SET", "maxmemory", "1");
      await expect(store.ping()).rejects.toThrow(/^OOM command not allowed/);
      const charge = (chargeId: string) =>
        store.charge({ userId: "u", window, cost: 50, limit: 200, chargeId });
      await expect(charge("a")).rejects.toThrow(/^OOM/);
      await expect(charge("b")).rejects.toThrow(/^OOM/);
      const refusals = lines.filter((l) => l.msg === "redis refuses quota commands");
      expect(refusals).toEqual([
        expect.objectContaining({ level: 50, err: expect.stringMatching(/^OOM/) }),
      ]);

      await admin.config("SET", "maxmemory", "0");
      await store.ping();
      expect(await charge("c")).toEqual({ allowed: true, used: 50 });
      expect(lines.at(-1)).toMatchObject({ msg: "redis takes quota commands again" });
    } finally {
      await admin.config("SET", "maxmemory", "0");
      admin.disconnect();
      await store.close();
    }
  });

  it("fails every call and is not ready when Redis refuses REDIS_URL's database, never using another", async () => {
    const { logger, lines } = createMemoryLogger();
    const store = createRedisQuotaStore({ url: `${redis.url}/99`, logger });
    try {
      await store.connected();
      await expect(store.ping()).rejects.toThrow(/DB index is out of range/);
      await expect(
        store.charge({ userId: "db99", window, cost: 50, limit: 200, chargeId: "x" }),
      ).rejects.toBeInstanceOf(QuotaStoreUnavailableError);
      expect(lines).toContainEqual(
        expect.objectContaining({
          level: 50,
          err: expect.stringMatching(/DB index is out of range/),
        }),
      );
      const admin = createTestRedis(redis.url);
      try {
        expect(await admin.keys("*db99*")).toEqual([]);
      } finally {
        admin.disconnect();
      }
    } finally {
      await store.close();
    }
  });
});
