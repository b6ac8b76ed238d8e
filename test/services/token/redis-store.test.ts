import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { windowAt } from "../../../src/services/token/clock.js";
import {
  type QuotaStore,
  QuotaStoreUnavailableError,
} from "../../../src/services/token/quota-store.js";
import {
  createRedisQuotaStore,
  quotaKeys,
  type RedisQuotaStore,
} from "../../../src/services/token/redis-store.js";
import { freePort } from "../../fixtures/processes.js";
import {
  createTestRedis,
  redisUrl,
  sharedRedisOrSkip,
  uniquePrefix,
} from "../../fixtures/redis.js";
import { describeQuotaStore } from "./quota-store.conformance.js";

const available = await sharedRedisOrSkip();

describe.runIf(available)("against the shared Redis", () => {
  const prefixes = new Map<QuotaStore, string>();
  describeQuotaStore("redis", {
    async create() {
      const keyPrefix = uniquePrefix("conformance");
      const store = createRedisQuotaStore({ url: redisUrl, keyPrefix });
      prefixes.set(store, keyPrefix);
      await store.connected();
      return store;
    },
    async dispose(store) {
      const admin = createTestRedis();
      try {
        await admin.deletePrefix(prefixes.get(store) ?? "none");
      } finally {
        admin.disconnect();
        await store.close();
      }
    },
  });
});

describe.runIf(available)("redis quota store keys", () => {
  const prefix = uniquePrefix("keys");
  let admin: ReturnType<typeof createTestRedis>;
  let store: RedisQuotaStore;
  beforeAll(async () => {
    admin = createTestRedis();
    store = createRedisQuotaStore({ url: redisUrl, keyPrefix: prefix });
    await store.connected();
  });
  afterAll(async () => {
    await admin.deletePrefix(prefix);
    admin.disconnect();
    await store.close();
  });

  it("keeps one counter per user per UTC day, expiring an hour after the day ends", async () => {
    const window = windowAt(new Date());
    await store.charge({ userId: "ttl", window, cost: 50, limit: 200, chargeId: "c1" });
    const keys = quotaKeys(prefix, "ttl", window);
    expect(await admin.get(keys.counter)).toBe("50");
    const expected = (window.resetAt.getTime() - Date.now()) / 1000 + 3_600;
    for (const key of [keys.counter, keys.charge("c1")]) {
      const ttl = await admin.ttl(key);
      expect(ttl).toBeGreaterThan(expected - 10);
      expect(ttl).toBeLessThanOrEqual(Math.ceil(expected) + 1);
    }
    expect(keys.counter).toBe(`${prefix}{ttl}:${window.day}`);
  });

  it("hash-tags every key of a user on the user, so they share a Redis Cluster slot", () => {
    const window = windowAt(new Date());
    const keys = quotaKeys(prefix, "a:b{c}", window);
    const tag = (key: string) => key.slice(key.indexOf("{") + 1, key.indexOf("}"));
    expect(tag(keys.counter)).toBe("a%3Ab%7Bc%7D");
    expect(tag(keys.charge("x}{y"))).toBe(tag(keys.counter));
  });

  it("keeps the counter's expiry through a refund", async () => {
    const window = windowAt(new Date());
    await store.charge({ userId: "keep", window, cost: 50, limit: 200, chargeId: "r1" });
    await store.refund({ userId: "keep", chargeId: "r1", window });
    const counter = quotaKeys(prefix, "keep", window).counter;
    expect(await admin.get(counter)).toBe("0");
    expect(await admin.ttl(counter)).toBeGreaterThan(3_600);
  });
});

describe("redis quota store without Redis", () => {
  it("fails at once with QuotaStoreUnavailableError, and is not ready", async () => {
    const store = createRedisQuotaStore({ url: `redis://127.0.0.1:${await freePort()}` });
    try {
      const window = windowAt(new Date());
      const started = Date.now();
      await expect(
        store.charge({ userId: "u", window, cost: 50, limit: 200, chargeId: "c" }),
      ).rejects.toBeInstanceOf(QuotaStoreUnavailableError);
      await expect(store.refund({ userId: "u", chargeId: "c", window })).rejects.toBeInstanceOf(
        QuotaStoreUnavailableError,
      );
      await expect(store.get({ userId: "u", window })).rejects.toBeInstanceOf(
        QuotaStoreUnavailableError,
      );
      await expect(store.ping()).rejects.toBeInstanceOf(QuotaStoreUnavailableError);
      expect(Date.now() - started).toBeLessThan(1_000);
    } finally {
      await store.close();
    }
  });
});
