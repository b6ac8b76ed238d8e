import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { QuotaNotChargedSchema } from "../../../gen/chat/v1/errors_pb.js";
import { TokenService } from "../../../gen/chat/v1/token_pb.js";
import { type Clock, windowAt } from "../../../src/services/token/clock.js";
import {
  createRedisQuotaStore,
  quotaKeys,
  type RedisQuotaStore,
} from "../../../src/services/token/redis-store.js";
import { createTokenService } from "../../../src/services/token/token-service.js";
import { freePort } from "../../fixtures/processes.js";
import {
  createTestRedis,
  redisServerOrSkip,
  redisUrl,
  sharedRedisOrSkip,
  startOwnRedis,
  uniquePrefix,
} from "../../fixtures/redis.js";

const available = await sharedRedisOrSkip();

function clientOver(store: RedisQuotaStore, clock?: Clock, failOpen = false, registry?: Registry) {
  return createClient(
    TokenService,
    createRouterTransport((router) =>
      router.service(
        TokenService,
        createTokenService({
          store,
          limit: 200,
          defaultCost: 50,
          failOpen,
          ...(clock ? { clock } : {}),
          ...(registry ? { registry } : {}),
        }),
      ),
    ),
  );
}

async function failure(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

describe.runIf(available)("TokenService over the shared Redis", () => {
  const prefix = uniquePrefix("token-service");
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

  it("rolls over at UTC midnight by the injected clock, each day's key expiring after it", async () => {
    const today = windowAt(new Date());
    const tomorrow = windowAt(today.resetAt);
    let now = new Date(today.resetAt.getTime() - 1_000);
    const client = clientOver(store, { now: () => now });

    for (let i = 0; i < 4; i++) await client.checkAndInc({ userId: "midnight" });
    expect((await failure(client.checkAndInc({ userId: "midnight" }))).code).toBe(
      Code.ResourceExhausted,
    );
    now = new Date(today.resetAt.getTime());
    const next = await client.checkAndInc({ userId: "midnight" });
    expect(next.remaining).toBe(150n);
    expect(next.resetTime && timestampDate(next.resetTime)).toEqual(tomorrow.resetAt);

    const todayKey = quotaKeys(prefix, "midnight", today).counter;
    const tomorrowKey = quotaKeys(prefix, "midnight", tomorrow).counter;
    expect([await admin.get(todayKey), await admin.get(tomorrowKey)]).toEqual(["200", "50"]);
    const secondsTo = (at: Date) => (at.getTime() - Date.now()) / 1000;
    const todayTtl = await admin.ttl(todayKey);
    const tomorrowTtl = await admin.ttl(tomorrowKey);
    expect(Math.abs(todayTtl - (secondsTo(today.resetAt) + 3_600))).toBeLessThan(10);
    expect(Math.abs(tomorrowTtl - (secondsTo(tomorrow.resetAt) + 3_600))).toBeLessThan(10);
  });

  it("charges a charge id sent twice once, and reads the quota without charging", async () => {
    const client = clientOver(store);
    const first = await client.checkAndInc({ userId: "twice", chargeId: "req-1" });
    const again = await client.checkAndInc({ userId: "twice", chargeId: "req-1" });
    expect([first.remaining, again.remaining]).toEqual([150n, 150n]);
    const quota = await client.getQuota({ userId: "twice" });
    expect(quota).toMatchObject({ used: 50n, remaining: 150n, limit: 200n });
    expect(await client.getQuota({ userId: "twice" })).toMatchObject({ used: 50n });
    const counter = quotaKeys(prefix, "twice", windowAt(new Date())).counter;
    expect(await admin.get(counter)).toBe("50");
  });
});

describe("TokenService while Redis is unreachable", () => {
  let store: RedisQuotaStore;
  beforeAll(async () => {
    store = createRedisQuotaStore({ url: `redis://127.0.0.1:${await freePort()}` });
  });
  afterAll(() => store.close());

  it("fails CheckAndInc, Refund and GetQuota with UNAVAILABLE", async () => {
    const client = clientOver(store);
    const calls = [
      client.checkAndInc({ userId: "u", chargeId: "c" }),
      client.refund({ userId: "u", chargeId: "c" }),
      client.getQuota({ userId: "u" }),
    ];
    for (const call of calls) expect((await failure(call)).code).toBe(Code.Unavailable);
  });

  it("says of a CheckAndInc it fails that nothing was charged (QuotaNotCharged)", async () => {
    const err = await failure(clientOver(store).checkAndInc({ userId: "u", chargeId: "c" }));
    expect(err.code).toBe(Code.Unavailable);
    expect(err.findDetails(QuotaNotChargedSchema)).toHaveLength(1);
  });

  it("lets CheckAndInc through uncharged and says so, with QUOTA_FAIL_OPEN", async () => {
    const client = clientOver(store, undefined, true);
    expect(await client.checkAndInc({ userId: "u", chargeId: "c" })).toMatchObject({
      unmetered: true,
      remaining: 200n,
      limit: 200n,
      cost: 0n,
    });
    expect((await failure(client.getQuota({ userId: "u" }))).code).toBe(Code.Unavailable);
  });

  it("counts the chats QUOTA_FAIL_OPEN let through uncharged in /metrics", async () => {
    const registry = new Registry();
    const client = clientOver(store, undefined, true, registry);
    for (const chargeId of ["c1", "c2", "c3"]) {
      expect((await client.checkAndInc({ userId: "u", chargeId })).unmetered).toBe(true);
    }
    const events = (await registry.getSingleMetric("chatmesh_quota_events_total")?.get())?.values;
    expect(events?.map((v) => [v.labels.event, v.value])).toEqual([["unmetered", 3]]);
  });
});

describe.runIf(redisServerOrSkip())("TokenService with QUOTA_FAIL_OPEN while Redis hangs", () => {
  it("takes back a charge that timed out once Redis runs it, so the chat stays uncharged", async () => {
    const own = await startOwnRedis();
    const prefix = uniquePrefix("hang");
    const store = createRedisQuotaStore({ url: own.url, keyPrefix: prefix, commandTimeoutMs: 200 });
    const admin = createTestRedis(own.url);
    try {
      await store.connected();
      const client = clientOver(store, undefined, true);
      // Redis takes the charge but runs it only after the pause: past the
      // command timeout, within the socket's (1 s), so the connection is kept.
      await admin.client("PAUSE", 600, "ALL");
      expect(await client.checkAndInc({ userId: "u", chargeId: "late" })).toMatchObject({
        unmetered: true,
        cost: 0n,
      });
      const keys = quotaKeys(prefix, "u", windowAt(new Date()));
      await vi.waitFor(
        async () => {
          expect(await admin.hget(keys.charge("late"), "refunded")).toBe("1");
        },
        { timeout: 20_000, interval: 100 },
      );
      // The charge was made, then taken back.
      expect(await admin.hget(keys.charge("late"), "cost")).toBe("50");
      expect((await client.getQuota({ userId: "u" })).used).toBe(0n);
    } finally {
      admin.disconnect();
      await store.close();
      await own.kill();
    }
  }, 30_000);
});

/**
 * Runs `body` against a Redis of its own (its settings are the test's to
 * change), with a quota store and an admin client over it; stops it after.
 */
async function withOwnRedis(
  name: string,
  body: (
    store: ReturnType<typeof createRedisQuotaStore>,
    admin: ReturnType<typeof createTestRedis>,
  ) => Promise<void>,
): Promise<void> {
  const own = await startOwnRedis();
  const store = createRedisQuotaStore({ url: own.url, keyPrefix: uniquePrefix(name) });
  const admin = createTestRedis(own.url);
  try {
    await store.connected();
    await body(store, admin);
  } finally {
    admin.disconnect();
    await store.close();
    await own.kill();
  }
}

describe.runIf(redisServerOrSkip())(
  "TokenService while Redis refuses writes (out of memory)",
  () => {
    it("lets chats through uncharged with QUOTA_FAIL_OPEN, and fails them as UNAVAILABLE without", async () => {
      await withOwnRedis("oom", async (store, admin) => {
        await admin.config("SET", "maxmemory", "1");
        const open = clientOver(store, undefined, true);
        expect(await open.checkAndInc({ userId: "u", chargeId: "c" })).toMatchObject({
          unmetered: true,
          cost: 0n,
        });
        const closed = clientOver(store);
        expect((await failure(closed.checkAndInc({ userId: "u", chargeId: "d" }))).code).toBe(
          Code.Unavailable,
        );
        // Refused, not run: nothing to take back once Redis takes writes again.
        await admin.config("SET", "maxmemory", "0");
        expect((await closed.getQuota({ userId: "u" })).used).toBe(0n);
      });
    });

    it("lets chats through uncharged with QUOTA_FAIL_OPEN while too few replicas take writes (NOREPLICAS)", async () => {
      await withOwnRedis("noreplicas", async (store, admin) => {
        // min-replicas-to-write without a replica: every write is refused for now.
        await admin.config("SET", "min-replicas-to-write", "1");
        expect(
          await clientOver(store, undefined, true).checkAndInc({ userId: "u", chargeId: "c" }),
        ).toMatchObject({ unmetered: true, cost: 0n });
        expect(
          (await failure(clientOver(store).checkAndInc({ userId: "u", chargeId: "d" }))).code,
        ).toBe(Code.Unavailable);
      });
    });

    it("gives nothing back, without failing, for a refund of a charge it refused; a charge made is still refunded once it can be", async () => {
      await withOwnRedis("oom-refund", async (store, admin) => {
        const client = clientOver(store);
        await client.checkAndInc({ userId: "u", chargeId: "made" });
        await admin.config("SET", "maxmemory", "1");
        expect((await failure(client.checkAndInc({ userId: "u", chargeId: "refused" }))).code).toBe(
          Code.Unavailable,
        );
        // The gateway refunds a charge it could not confirm: nothing to give back, and no retries.
        expect(await client.refund({ userId: "u", chargeId: "refused" })).toMatchObject({
          refunded: 0n,
          remaining: 150n,
        });
        // A charge that was made cannot be given back while Redis takes no writes: retried later.
        expect((await failure(client.refund({ userId: "u", chargeId: "made" }))).code).toBe(
          Code.Unavailable,
        );
        await admin.config("SET", "maxmemory", "0");
        expect((await client.refund({ userId: "u", chargeId: "made" })).refunded).toBe(50n);
      });
    });
  },
);
