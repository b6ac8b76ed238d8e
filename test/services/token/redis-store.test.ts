import { describe } from "vitest";
import type { QuotaStore } from "../../../src/services/token/quota-store.js";
import { createRedisQuotaStore } from "../../../src/services/token/redis-store.js";
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
