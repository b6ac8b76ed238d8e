import { describe, expect, it } from "vitest";
import { windowAt } from "../../../src/services/token/clock.js";
import { createMemoryQuotaStore } from "../../../src/services/token/memory-store.js";

const day1 = windowAt(new Date("2026-11-26T10:00:00Z"));
const day2 = windowAt(new Date("2026-11-27T00:00:00Z"));

describe("windowAt", () => {
  it("is the UTC day, resetting at the next UTC midnight", () => {
    expect(day1.day).toBe("2026-11-26");
    expect(day1.resetAt.toISOString()).toBe("2026-11-27T00:00:00.000Z");
    expect(windowAt(new Date("2026-11-26T23:59:59.999Z")).day).toBe("2026-11-26");
    expect(day2.day).toBe("2026-11-27");
  });
});

describe("memory quota store", () => {
  const charge = (
    store: ReturnType<typeof createMemoryQuotaStore>,
    userId: string,
    chargeId = "",
    window = day1,
  ) => store.charge({ userId, window, cost: 50, limit: 200, chargeId });

  it("charges until the limit and then refuses without charging", async () => {
    const store = createMemoryQuotaStore();
    const used = [];
    for (let i = 0; i < 6; i++) used.push(await charge(store, "u1"));
    expect(used.map((r) => [r.allowed, r.used])).toEqual([
      [true, 50],
      [true, 100],
      [true, 150],
      [true, 200],
      [false, 200],
      [false, 200],
    ]);
  });

  it("keeps users apart", async () => {
    const store = createMemoryQuotaStore();
    await charge(store, "u1");
    expect((await charge(store, "u2")).used).toBe(50);
  });

  it("starts every UTC day afresh", async () => {
    const store = createMemoryQuotaStore();
    for (let i = 0; i < 4; i++) await charge(store, "u1");
    expect((await charge(store, "u1")).allowed).toBe(false);
    expect(await charge(store, "u1", "", day2)).toEqual({ allowed: true, used: 50 });
  });

  it("charges a charge id once", async () => {
    const store = createMemoryQuotaStore();
    await charge(store, "u1", "c1");
    expect(await charge(store, "u1", "c1")).toEqual({ allowed: true, used: 50 });
    expect((await charge(store, "u1", "c2")).used).toBe(100);
  });

  it("refunds a charge exactly once, and only to its user", async () => {
    const store = createMemoryQuotaStore();
    await charge(store, "u1", "c1");
    await charge(store, "u1", "c2");
    expect(await store.refund({ userId: "u2", chargeId: "c1" })).toEqual({ refunded: 0, used: 0 });
    expect(await store.refund({ userId: "u1", chargeId: "c1" })).toEqual({
      refunded: 50,
      used: 50,
    });
    expect(await store.refund({ userId: "u1", chargeId: "c1" })).toEqual({ refunded: 0, used: 50 });
    expect(await store.refund({ userId: "u1", chargeId: "nope" })).toEqual({
      refunded: 0,
      used: 0,
    });
  });

  it("lets exactly as many concurrent charges through as fit", async () => {
    const store = createMemoryQuotaStore();
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => charge(store, "u1", `c${i}`)),
    );
    expect(results.filter((r) => r.allowed)).toHaveLength(4);
  });
});
