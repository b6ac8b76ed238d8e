import type { TokenConfig } from "../../lib/config.js";
import type { Logger } from "../../lib/logger.js";
import type { ReadyCheck } from "../../lib/readiness.js";
import { createMemoryQuotaStore } from "./memory-store.js";
import type { QuotaStore } from "./quota-store.js";

/** A quota store with what /readyz must check for it. */
export interface ConfiguredStore {
  readonly store: QuotaStore;
  readonly readyChecks: Readonly<Record<string, ReadyCheck>>;
}

/**
 * The store QUOTA_STORE names; the redis one makes the process not ready
 * while Redis is down, unless QUOTA_FAIL_OPEN lets chats through then (the
 * process serves them: not ready, every replica would leave its Service at
 * once, and the gateways theirs). The Redis client is loaded only then: it is about
 * 25 MB of RSS that the memory store does not need.
 */
export async function createQuotaStoreFromConfig(
  config: TokenConfig,
  logger: Logger,
): Promise<ConfiguredStore> {
  if (config.quotaStore === "redis") {
    const { createRedisQuotaStore } = await import("./redis-store.js");
    const store = createRedisQuotaStore({ url: config.redisUrl, logger });
    const readyChecks = config.quotaFailOpen ? {} : { redis: () => store.ping() };
    return { store, readyChecks };
  }
  return { store: createMemoryQuotaStore(), readyChecks: {} };
}
