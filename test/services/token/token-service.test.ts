import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { QuotaExceededSchema, QuotaNotChargedSchema } from "../../../gen/chat/v1/errors_pb.js";
import { TokenService } from "../../../gen/chat/v1/token_pb.js";
import type { Clock } from "../../../src/services/token/clock.js";
import { createMemoryQuotaStore } from "../../../src/services/token/memory-store.js";
import {
  type QuotaStore,
  QuotaStoreUnavailableError,
} from "../../../src/services/token/quota-store.js";
import { createTokenService } from "../../../src/services/token/token-service.js";

function setup(start = "2026-11-26T12:00:00Z", store: QuotaStore = createMemoryQuotaStore()) {
  let now = new Date(start);
  const clock: Clock = { now: () => now };
  const client = createClient(
    TokenService,
    createRouterTransport((router) =>
      router.service(
        TokenService,
        createTokenService({ store, limit: 200, defaultCost: 50, clock }),
      ),
    ),
  );
  return {
    client,
    setNow: (iso: string) => {
      now = new Date(iso);
    },
  };
}

async function refusal(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

describe("TokenService over a router transport", () => {
  it("gives the contract's sequence 150, 100, 50, 0, then RESOURCE_EXHAUSTED with -50", async () => {
    const { client } = setup();
    const remaining = [];
    for (let i = 0; i < 4; i++) {
      remaining.push(Number((await client.checkAndInc({ userId: "u1" })).remaining));
    }
    expect(remaining).toEqual([150, 100, 50, 0]);
    for (let i = 0; i < 2; i++) {
      const err = await refusal(client.checkAndInc({ userId: "u1" }));
      expect(err.code).toBe(Code.ResourceExhausted);
      const [detail] = err.findDetails(QuotaExceededSchema);
      expect(detail?.remaining).toBe(-50n);
      expect(detail?.limit).toBe(200n);
      expect(detail?.cost).toBe(50n);
      expect(detail?.resetTime && timestampDate(detail.resetTime).toISOString()).toBe(
        "2026-11-27T00:00:00.000Z",
      );
    }
  });

  it("charges an explicit cost and reports negative remaining for an oversize one", async () => {
    const { client } = setup();
    expect((await client.checkAndInc({ userId: "u1", cost: 120n })).remaining).toBe(80n);
    const err = await refusal(client.checkAndInc({ userId: "u1", cost: 100n }));
    expect(err.findDetails(QuotaExceededSchema)[0]?.remaining).toBe(-20n);
  });

  it("resets at the next UTC midnight", async () => {
    const { client, setNow } = setup("2026-11-26T23:59:59Z");
    for (let i = 0; i < 4; i++) await client.checkAndInc({ userId: "u1" });
    await refusal(client.checkAndInc({ userId: "u1" }));
    setNow("2026-11-27T00:00:00Z");
    expect((await client.checkAndInc({ userId: "u1" })).remaining).toBe(150n);
  });

  it("refunds a charge by its id, once", async () => {
    const { client } = setup();
    await client.checkAndInc({ userId: "u1", chargeId: "r1" });
    await client.checkAndInc({ userId: "u1", chargeId: "r2" });
    expect(await client.refund({ userId: "u1", chargeId: "r1" })).toMatchObject({
      refunded: 50n,
      remaining: 150n,
    });
    expect((await client.refund({ userId: "u1", chargeId: "r1" })).refunded).toBe(0n);
    expect((await client.checkAndInc({ userId: "u1" })).remaining).toBe(100n);
  });

  it("counts a retried charge apart from charges, and tells an unknown refund what is left", async () => {
    const registry = new Registry();
    const client = createClient(
      TokenService,
      createRouterTransport((router) =>
        router.service(
          TokenService,
          createTokenService({
            store: createMemoryQuotaStore(),
            limit: 200,
            defaultCost: 50,
            registry,
          }),
        ),
      ),
    );
    await client.checkAndInc({ userId: "u1", chargeId: "r1" });
    // A retry is told what the charge cost, whatever cost it names.
    expect(await client.checkAndInc({ userId: "u1", chargeId: "r1", cost: 1000n })).toMatchObject({
      remaining: 150n,
      cost: 50n,
    });
    await client.checkAndInc({ userId: "u1", chargeId: "r2" });
    const events = Object.fromEntries(
      (await registry.getSingleMetric("chatmesh_quota_events_total")?.get())?.values.map((v) => [
        v.labels.event,
        v.value,
      ]) ?? [],
    );
    expect(events).toEqual({ charged: 2, repeated: 1 });
    // Nothing given back for an unknown charge; the remaining is the user's real one, not the limit.
    expect(await client.refund({ userId: "u1", chargeId: "never" })).toMatchObject({
      refunded: 0n,
      remaining: 100n,
    });
  });

  it("settles a charge to its real cost, and settles a refunded one no more", async () => {
    const { client } = setup();
    await client.checkAndInc({ userId: "u1", chargeId: "s1", cost: 60n });
    expect(await client.settle({ userId: "u1", chargeId: "s1", cost: 25n })).toMatchObject({
      settled: true,
      remaining: 175n,
      limit: 200n,
      cost: 25n,
    });
    expect(await client.settle({ userId: "u1", chargeId: "s1", cost: 260n })).toMatchObject({
      settled: true,
      remaining: 0n,
      cost: 260n,
    });
    expect((await client.getQuota({ userId: "u1" })).used).toBe(260n);
    await client.refund({ userId: "u1", chargeId: "s1" });
    expect(await client.settle({ userId: "u1", chargeId: "s1", cost: 10n })).toMatchObject({
      settled: false,
      remaining: 200n,
      cost: 0n,
    });
    expect((await client.getQuota({ userId: "u1" })).used).toBe(0n);
  });

  it("reads the quota without charging it", async () => {
    const { client } = setup();
    expect(await client.getQuota({ userId: "u1" })).toMatchObject({
      used: 0n,
      remaining: 200n,
      limit: 200n,
    });
    await client.checkAndInc({ userId: "u1" });
    const quota = await client.getQuota({ userId: "u1" });
    expect(quota).toMatchObject({ used: 50n, remaining: 150n, limit: 200n });
    expect(quota.resetTime && timestampDate(quota.resetTime).toISOString()).toBe(
      "2026-11-27T00:00:00.000Z",
    );
    expect((await client.checkAndInc({ userId: "u1" })).remaining).toBe(100n);
  });

  it("fails a charge the store may have run (a command sent that timed out) with UNAVAILABLE that does not say nothing was charged", async () => {
    const store = createMemoryQuotaStore();
    const { client } = setup(undefined, {
      ...store,
      charge: () =>
        Promise.reject(new QuotaStoreUnavailableError("command timed out", { mayHaveRun: true })),
    });
    const err = await refusal(client.checkAndInc({ userId: "u1", chargeId: "c" }));
    expect(err.code).toBe(Code.Unavailable);
    expect(err.findDetails(QuotaNotChargedSchema)).toEqual([]);
  });

  it("refuses bad requests with INVALID_ARGUMENT", async () => {
    const { client } = setup();
    expect((await refusal(client.checkAndInc({ userId: "" }))).code).toBe(Code.InvalidArgument);
    expect((await refusal(client.checkAndInc({ userId: "u", cost: -1n }))).code).toBe(
      Code.InvalidArgument,
    );
    expect((await refusal(client.refund({ userId: "u", chargeId: "" }))).code).toBe(
      Code.InvalidArgument,
    );
    expect((await refusal(client.getQuota({ userId: "" }))).code).toBe(Code.InvalidArgument);
    const tooLong = "x".repeat(257);
    for (const call of [
      client.checkAndInc({ userId: tooLong }),
      client.getQuota({ userId: tooLong }),
      client.refund({ userId: tooLong, chargeId: "c" }),
      client.settle({ userId: tooLong, chargeId: "c", cost: 1n }),
    ]) {
      expect(await refusal(call)).toMatchObject({
        code: Code.InvalidArgument,
        rawMessage: "user_id is longer than 256 characters",
      });
    }
    // Counted in characters: 256 outside the BMP are two UTF-16 units each, and fine.
    expect((await client.checkAndInc({ userId: "𝄞".repeat(256) })).remaining).toBe(150n);
    // A charge id is a key in the store as a user id is: as long at most.
    for (const call of [
      client.checkAndInc({ userId: "u", chargeId: tooLong }),
      client.refund({ userId: "u", chargeId: tooLong }),
      client.settle({ userId: "u", chargeId: tooLong, cost: 1n }),
    ]) {
      expect(await refusal(call)).toMatchObject({
        code: Code.InvalidArgument,
        rawMessage: "charge_id is longer than 256 characters",
      });
    }
    expect((await client.checkAndInc({ userId: "u", chargeId: "𝄞".repeat(256) })).cost).toBe(50n);
    expect((await client.getQuota({ userId: "u" })).used).toBe(50n);
    expect((await refusal(client.settle({ userId: "u", chargeId: "", cost: 1n }))).code).toBe(
      Code.InvalidArgument,
    );
    expect((await refusal(client.settle({ userId: "u", chargeId: "c", cost: -1n }))).code).toBe(
      Code.InvalidArgument,
    );
  });
});
