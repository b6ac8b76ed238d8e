import { afterEach, describe, expect, it } from "vitest";
import { windowAt } from "../../../src/services/token/clock.js";
import type { QuotaStore } from "../../../src/services/token/quota-store.js";

/** How a conformance run gets a fresh, empty store, and gets rid of it. */
export interface StoreFactory {
  create(): Promise<QuotaStore> | QuotaStore;
  /** Called after each test with the store it made (delete its keys, close it). */
  dispose(store: QuotaStore): Promise<void>;
}

// Real days around now: a store that expires keys by the clock (Redis) keeps them.
const today = windowAt(new Date());
const tomorrow = windowAt(today.resetAt);

/**
 * The semantics every QuotaStore has, as one suite that each store runs:
 * refuse without charging, per user and per UTC day, charge ids charged at
 * most once, refunds once and only to the charge's user, settling to the real
 * cost, exact under concurrency.
 */
export function describeQuotaStore(name: string, factory: StoreFactory): void {
  describe(`${name} quota store (conformance)`, () => {
    const made: QuotaStore[] = [];
    const fresh = async () => {
      const store = await factory.create();
      made.push(store);
      return store;
    };
    afterEach(async () => {
      await Promise.all(made.splice(0).map((s) => factory.dispose(s)));
    });
    const charge = (store: QuotaStore, userId: string, chargeId = "", window = today, cost = 50) =>
      store.charge({ userId, window, cost, limit: 200, chargeId });

    it("charges until the limit and then refuses without charging", async () => {
      const store = await fresh();
      const seen = [];
      for (let i = 0; i < 6; i++) seen.push(await charge(store, "u1"));
      expect(seen.map((r) => [r.allowed, r.used])).toEqual([
        [true, 50],
        [true, 100],
        [true, 150],
        [true, 200],
        [false, 200],
        [false, 200],
      ]);
      expect(await store.get({ userId: "u1", window: today })).toBe(200);
    });

    it("refuses a charge bigger than the room left, and still takes one that fits", async () => {
      const store = await fresh();
      await charge(store, "u1", "", today, 120);
      expect(await charge(store, "u1", "", today, 100)).toEqual({ allowed: false, used: 120 });
      expect(await charge(store, "u1", "", today, 80)).toEqual({ allowed: true, used: 200 });
    });

    it("reads 0 for a user never charged, and charges nothing for cost 0", async () => {
      const store = await fresh();
      expect(await store.get({ userId: "nobody", window: today })).toBe(0);
      expect(await charge(store, "u1", "", today, 0)).toEqual({ allowed: true, used: 0 });
    });

    it("keeps users apart", async () => {
      const store = await fresh();
      await charge(store, "u1");
      expect((await charge(store, "u2")).used).toBe(50);
      expect(await store.get({ userId: "u1", window: today })).toBe(50);
    });

    it("keeps users apart whatever their ids contain", async () => {
      const store = await fresh();
      const tricky = ["a:b", "a}", "{a", "a:2026-01-01:charge:x", "用户", "a b"];
      for (const userId of tricky) await charge(store, userId, "c1");
      for (const userId of tricky) {
        expect(await store.get({ userId, window: today })).toBe(50);
      }
    });

    it("keeps charges apart whatever their ids contain: one user cannot refund another's", async () => {
      const store = await fresh();
      // Split differently, the same characters: user "a" with charge "\0b\0c", user "a\0b" with "\0c".
      const pairs = [
        ["a", "\u0000b\u0000c"],
        ["a\u0000b", "\u0000c"],
        ["a\u0000b\u0000", "c"],
        ["1:a", "b"],
        ["1", ":ab"],
      ] as const;
      for (const [userId, chargeId] of pairs) {
        expect(await charge(store, userId, chargeId)).toEqual({ allowed: true, used: 50 });
      }
      expect(
        await store.refund({ userId: "a", chargeId: "\u0000b\u0000c", window: today }),
      ).toEqual({ refunded: 50, used: 0 });
      for (const [userId, chargeId] of pairs.slice(1)) {
        expect(await store.get({ userId, window: today })).toBe(50);
        // Each charge is still its own user's: a retry charges nothing more, a refund gives it back.
        expect(await charge(store, userId, chargeId)).toEqual({
          allowed: true,
          used: 50,
          repeated: true,
          cost: 50,
        });
        expect(await store.refund({ userId, chargeId, window: today })).toEqual({
          refunded: 50,
          used: 0,
        });
      }
    });

    it("starts every UTC day afresh, leaving the day before as it was", async () => {
      const store = await fresh();
      for (let i = 0; i < 4; i++) await charge(store, "u1");
      expect((await charge(store, "u1")).allowed).toBe(false);
      expect(await charge(store, "u1", "", tomorrow)).toEqual({ allowed: true, used: 50 });
      expect(await store.get({ userId: "u1", window: tomorrow })).toBe(50);
    });

    it("keeps a day's counters and charges when the clock steps back across midnight and forward again", async () => {
      const store = await fresh();
      for (const id of ["a1", "a2", "a3", "a4"]) await charge(store, "u1", id, tomorrow);
      // An NTP step or a resumed VM: a charge stamped with the day before.
      expect(await charge(store, "u1", "b1", today)).toEqual({ allowed: true, used: 50 });
      expect(await charge(store, "u1", "a5", tomorrow)).toEqual({ allowed: false, used: 200 });
      expect(await store.refund({ userId: "u1", chargeId: "a1", window: tomorrow })).toEqual({
        refunded: 50,
        used: 150,
      });
    });

    it("keeps the day before for retries after midnight when the clock once went a year ahead and came back", async () => {
      const store = await fresh();
      const nextYear = windowAt(new Date(today.resetAt.getTime() + 365 * 86_400_000));
      await charge(store, "glitch", "", nextYear);
      await charge(store, "u1", "r1", today);
      // Just after midnight, the retry of r1 finds it in the day before.
      expect(await charge(store, "u1", "r1", tomorrow)).toEqual({
        allowed: true,
        used: 0,
        repeated: true,
        cost: 50,
      });
    });

    it("charges a charge id once, and a refused charge leaves no record", async () => {
      const store = await fresh();
      expect(await charge(store, "u1", "c1")).toEqual({ allowed: true, used: 50 });
      // A retry that names another cost is told the one charged.
      expect(await charge(store, "u1", "c1", today, 120)).toEqual({
        allowed: true,
        used: 50,
        repeated: true,
        cost: 50,
      });
      expect((await charge(store, "u1", "c2")).used).toBe(100);
      expect(await charge(store, "u2", "c1")).toEqual({ allowed: true, used: 50 });
      await charge(store, "u1", "", today, 100);
      expect(await charge(store, "u1", "c3")).toEqual({ allowed: false, used: 200 });
      // Unknown, so nothing is given back; what the user used today is told as it is.
      expect(await store.refund({ userId: "u1", chargeId: "c3", window: today })).toEqual({
        refunded: 0,
        used: 200,
      });
    });

    it("refunds a charge exactly once, and only to its user", async () => {
      const store = await fresh();
      await charge(store, "u1", "c1");
      await charge(store, "u1", "c2");
      const refund = (userId: string, chargeId: string) =>
        store.refund({ userId, chargeId, window: today });
      expect(await refund("u2", "c1")).toEqual({ refunded: 0, used: 0 });
      expect(await refund("u1", "c1")).toEqual({ refunded: 50, used: 50 });
      expect(await refund("u1", "c1")).toEqual({ refunded: 0, used: 50 });
      expect(await refund("u1", "nope")).toEqual({ refunded: 0, used: 50 });
      expect(await store.get({ userId: "u1", window: today })).toBe(50);
      // A refunded id stays spent: charging it again charges nothing, and it costs nothing now.
      expect(await charge(store, "u1", "c1")).toEqual({
        allowed: true,
        used: 50,
        repeated: true,
        cost: 0,
      });
    });

    it("charges nothing for a charge that lands after its refund (a call still on its way)", async () => {
      const store = await fresh();
      // The caller gave up on the charge and refunded it before the store saw the charge.
      expect(await store.refund({ userId: "u1", chargeId: "late", window: today })).toEqual({
        refunded: 0,
        used: 0,
      });
      expect(await charge(store, "u1", "late")).toEqual({
        allowed: true,
        used: 0,
        repeated: true,
        cost: 0,
      });
      expect(await store.get({ userId: "u1", window: today })).toBe(0);
      // Nor is there anything to settle, and another user's charge of that id is its own.
      expect(
        (await store.settle({ userId: "u1", chargeId: "late", cost: 9, window: today })).settled,
      ).toBe(false);
      expect(await charge(store, "u2", "late")).toEqual({ allowed: true, used: 50 });
    });

    it("counts exactly up to the largest limit the config takes (2^53 - 1)", async () => {
      const store = await fresh();
      const max = Number.MAX_SAFE_INTEGER;
      const big = (chargeId: string, cost: number) =>
        store.charge({ userId: "big", window: today, cost, limit: max, chargeId });
      expect(await big("a", max - 2)).toEqual({ allowed: true, used: max - 2 });
      expect(await big("b", 3)).toEqual({ allowed: false, used: max - 2 });
      expect(await big("c", 2)).toEqual({ allowed: true, used: max });
      expect(await store.get({ userId: "big", window: today })).toBe(max);
      expect(await store.refund({ userId: "big", chargeId: "a", window: today })).toEqual({
        refunded: max - 2,
        used: 2,
      });
      expect(
        await store.settle({ userId: "big", chargeId: "c", window: today, cost: max }),
      ).toEqual({
        settled: true,
        used: max,
      });
    });

    it("gives back the exact amount of an odd-sized charge", async () => {
      const store = await fresh();
      await charge(store, "u1", "a", today, 37);
      await charge(store, "u1", "b", today, 101);
      expect(await store.refund({ userId: "u1", chargeId: "a", window: today })).toEqual({
        refunded: 37,
        used: 101,
      });
    });

    it("refunds after midnight a charge made before it, telling what the new day has used", async () => {
      const store = await fresh();
      await charge(store, "u1", "late", today);
      await charge(store, "u1", "early", tomorrow);
      expect(await store.refund({ userId: "u1", chargeId: "late", window: tomorrow })).toEqual({
        refunded: 50,
        used: 50,
      });
      expect(await store.get({ userId: "u1", window: today })).toBe(0);
      expect(await store.get({ userId: "u1", window: tomorrow })).toBe(50);
      expect(await store.refund({ userId: "u1", chargeId: "late", window: tomorrow })).toEqual({
        refunded: 0,
        used: 50,
      });
    });

    it("charges nothing for a retry after midnight of a charge made before it", async () => {
      const store = await fresh();
      await charge(store, "u1", "late", today);
      await charge(store, "u1", "early", tomorrow, 30);
      // The retry answers with the new day's count, which it left as it was.
      expect(await charge(store, "u1", "late", tomorrow)).toEqual({
        allowed: true,
        used: 30,
        repeated: true,
        cost: 50,
      });
      expect(await store.get({ userId: "u1", window: tomorrow })).toBe(30);
      expect(await store.get({ userId: "u1", window: today })).toBe(50);
      // The one charge there is is refunded once, in its own day; the answer
      // tells what the new day has used.
      expect(await store.refund({ userId: "u1", chargeId: "late", window: tomorrow })).toEqual({
        refunded: 50,
        used: 30,
      });
      expect(await store.refund({ userId: "u1", chargeId: "late", window: tomorrow })).toEqual({
        refunded: 0,
        used: 30,
      });
      expect(await store.get({ userId: "u1", window: today })).toBe(0);
      expect(await store.get({ userId: "u1", window: tomorrow })).toBe(30);
      // Another user's charge of the same id the day before is not this user's.
      expect(await charge(store, "u2", "late", tomorrow)).toEqual({ allowed: true, used: 50 });
    });

    it("settles a charge to its real cost: gives back the difference or charges the extra", async () => {
      const store = await fresh();
      const settle = (chargeId: string, cost: number, window = today) =>
        store.settle({ userId: "u1", chargeId, cost, window });
      await charge(store, "u1", "a", today, 60);
      await charge(store, "u1", "b", today, 40);
      expect(await settle("a", 25)).toEqual({ settled: true, used: 65 });
      // Settling again to the same cost is a no-op, so a retry is safe.
      expect(await settle("a", 25)).toEqual({ settled: true, used: 65 });
      // The extra goes on even past the limit: the tokens were spent.
      expect(await settle("b", 190)).toEqual({ settled: true, used: 215 });
      expect(await store.get({ userId: "u1", window: today })).toBe(215);
      // A retried charge is told the settled cost.
      expect(await charge(store, "u1", "b", today, 50)).toEqual({
        allowed: true,
        used: 215,
        repeated: true,
        cost: 190,
      });
      expect((await charge(store, "u1", "c", today, 1)).allowed).toBe(false);
      // A refund gives back the settled cost, not the reserved one.
      expect(await store.refund({ userId: "u1", chargeId: "b", window: today })).toEqual({
        refunded: 190,
        used: 25,
      });
    });

    it("settles nothing for an unknown, refunded or other user's charge", async () => {
      const store = await fresh();
      await charge(store, "u1", "a", today, 50);
      expect(
        await store.settle({ userId: "u1", chargeId: "nope", cost: 10, window: today }),
      ).toEqual({ settled: false, used: 0 });
      expect(await store.settle({ userId: "u2", chargeId: "a", cost: 10, window: today })).toEqual({
        settled: false,
        used: 0,
      });
      await store.refund({ userId: "u1", chargeId: "a", window: today });
      expect(await store.settle({ userId: "u1", chargeId: "a", cost: 10, window: today })).toEqual({
        settled: false,
        used: 0,
      });
      expect(await store.get({ userId: "u1", window: today })).toBe(0);
    });

    it("settles after midnight a charge made before it, in its own day, telling what the new day has used", async () => {
      const store = await fresh();
      await charge(store, "u1", "late", today, 50);
      await charge(store, "u1", "early", tomorrow, 50);
      expect(
        await store.settle({ userId: "u1", chargeId: "late", cost: 80, window: tomorrow }),
      ).toEqual({ settled: true, used: 50 });
      expect(await store.get({ userId: "u1", window: today })).toBe(80);
      expect(await store.get({ userId: "u1", window: tomorrow })).toBe(50);
    });

    it("keeps the counter exact when many charges settle at once", async () => {
      const store = await fresh();
      const ids = Array.from({ length: 40 }, (_, i) => `s${i}`);
      await Promise.all(ids.map((id) => charge(store, "u1", id, today, 5)));
      await Promise.all(
        ids.map((id, i) =>
          store.settle({ userId: "u1", chargeId: id, cost: i % 2 === 0 ? 2 : 7, window: today }),
        ),
      );
      expect(await store.get({ userId: "u1", window: today })).toBe(20 * 2 + 20 * 7);
    });

    it("lets exactly as many concurrent charges through as fit", async () => {
      const store = await fresh();
      const results = await Promise.all(
        Array.from({ length: 200 }, (_, i) => charge(store, "u1", `c${i}`)),
      );
      expect(results.filter((r) => r.allowed)).toHaveLength(4);
      expect(results.filter((r) => !r.allowed).every((r) => r.used === 200)).toBe(true);
      expect(await store.get({ userId: "u1", window: today })).toBe(200);
    });

    it("charges one id sent many times at once only once, and refunds it once", async () => {
      const store = await fresh();
      const charged = await Promise.all(Array.from({ length: 20 }, () => charge(store, "u1", "x")));
      expect(charged.every((r) => r.allowed)).toBe(true);
      expect(await store.get({ userId: "u1", window: today })).toBe(50);
      const refunds = await Promise.all(
        Array.from({ length: 20 }, () =>
          store.refund({ userId: "u1", chargeId: "x", window: today }),
        ),
      );
      expect(refunds.reduce((sum, r) => sum + r.refunded, 0)).toBe(50);
      expect(await store.get({ userId: "u1", window: today })).toBe(0);
    });
  });
}
