import { previousWindow, type QuotaWindow } from "./clock.js";
import { type Digest, DigestMap, digestOf } from "./digest-map.js";
import type {
  ChargeInput,
  ChargeResult,
  PeekInput,
  QuotaStore,
  RefundInput,
  RefundResult,
  SettleInput,
  SettleResult,
} from "./quota-store.js";

/**
 * A charge as one number, the value of its digest in the day's charges: its
 * cost (never negative), or -1 once it was refunded.
 */
type ChargeRecord = number;
const refundedRecord: ChargeRecord = -1;
const isRefunded = (record: ChargeRecord) => record < 0;

interface DayState {
  /** What each user has used, by the digest of the user id. */
  readonly used: DigestMap;
  /** Each charge, by the digest of its key (`chargeKey`). */
  readonly charges: DigestMap;
}

/**
 * The key of a user's charge: the user id's length, a colon, then the two
 * ids, as one string. The length says where the user id ends, so no two
 * (user, charge) pairs share a key, whatever characters the ids hold (with a
 * NUL between them, user "a\0b" with charge "c" was user "a" with charge
 * "b\0c": one could refund the other's charge).
 */
const chargeKey = (userId: string, chargeId: string) =>
  digestOf(`${userId.length}:${userId}${chargeId}`);

/**
 * The embedded quota store: counters in this process's memory. Exact for one
 * token process (Node runs each charge to completion); replicas need the Redis
 * store. When a new day is seen, every day is dropped but it, the latest
 * one seen, and the day before each (the day before stays for refunds
 * across midnight; a clock stepped back keeps the latest), so memory holds
 * two days of users, up to four while the clock is off by a day or more.
 * Users and charge ids are kept by digest
 * (`DigestMap`, outside V8's heap): a new user's charge takes 64–128 bytes,
 * and each charge id is kept for its day and the next (a retry is charged
 * once, whenever it comes).
 */
export function createMemoryQuotaStore(): QuotaStore {
  const days = new Map<string, DayState>();
  /** The latest day charged: a clock stepped back across midnight must not drop it. */
  let newest: QuotaWindow | undefined;

  const dayState = (input: PeekInput): DayState => {
    let state = days.get(input.window.day);
    if (state === undefined) {
      if (newest === undefined || input.window.day > newest.day) newest = input.window;
      // The day asked for and the latest, each with the day before it: a
      // clock stepped back keeps the latest, and one that went ahead and
      // came back (a glitch) still keeps today's day before.
      const keep = [newest, input.window].flatMap((w) => [w.day, previousWindow(w).day]);
      for (const [day, old] of days) {
        if (keep.includes(day)) continue;
        days.delete(day);
        old.used.dispose();
        old.charges.dispose();
      }
      state = { used: new DigestMap(), charges: new DigestMap() };
      days.set(input.window.day, state);
    }
    return state;
  };
  /** A charge in the window given or the one before (for calls just after midnight). */
  const findCharge = (window: QuotaWindow, key: Digest) => {
    const today = days.get(window.day);
    const record = today?.charges.get(key);
    if (today !== undefined && record !== undefined) return { state: today, record };
    const before = days.get(previousWindow(window).day);
    const earlier = before?.charges.get(key);
    return before !== undefined && earlier !== undefined
      ? { state: before, record: earlier }
      : undefined;
  };

  /** What the user (by digest) has used in the window of `day`. */
  const usedIn = (day: string, user: Digest) => days.get(day)?.used.get(user) ?? 0;

  return {
    async charge(input: ChargeInput): Promise<ChargeResult> {
      const state = dayState(input);
      const user = digestOf(input.userId);
      const used = state.used.get(user) ?? 0;
      // A charge id is charged at most once, whatever became of it since,
      // also when its retry comes just after midnight.
      const key = input.chargeId === "" ? undefined : chargeKey(input.userId, input.chargeId);
      const found = key === undefined ? undefined : findCharge(input.window, key);
      if (found !== undefined) {
        const cost = isRefunded(found.record) ? 0 : found.record;
        return { allowed: true, used, repeated: true, cost };
      }
      if (used + input.cost > input.limit) return { allowed: false, used };
      state.used.set(user, used + input.cost);
      if (key !== undefined) state.charges.set(key, input.cost);
      return { allowed: true, used: used + input.cost };
    },

    async refund(input: RefundInput): Promise<RefundResult> {
      const user = digestOf(input.userId);
      const key = chargeKey(input.userId, input.chargeId);
      const found = findCharge(input.window, key);
      if (found === undefined) {
        // Kept as refunded: the charge may still be on its way, and must charge nothing when it lands.
        dayState(input).charges.set(key, refundedRecord);
        return { refunded: 0, used: usedIn(input.window.day, user) };
      }
      if (isRefunded(found.record)) return { refunded: 0, used: usedIn(input.window.day, user) };
      const { state, record } = found;
      state.charges.set(key, refundedRecord);
      state.used.set(user, Math.max(0, (state.used.get(user) ?? 0) - record));
      return { refunded: record, used: usedIn(input.window.day, user) };
    },

    async settle(input: SettleInput): Promise<SettleResult> {
      const key = chargeKey(input.userId, input.chargeId);
      const found = findCharge(input.window, key);
      if (found === undefined || isRefunded(found.record)) return { settled: false, used: 0 };
      const user = digestOf(input.userId);
      const { state, record } = found;
      // The old cost out before the new one in: the sum stays exact up to 2^53.
      const after = Math.max(0, (state.used.get(user) ?? 0) - record + input.cost);
      state.charges.set(key, input.cost);
      state.used.set(user, after);
      return { settled: true, used: usedIn(input.window.day, user) };
    },

    async get(input: PeekInput): Promise<number> {
      return usedIn(input.window.day, digestOf(input.userId));
    },

    async close() {
      for (const state of days.values()) {
        state.used.dispose();
        state.charges.dispose();
      }
      days.clear();
    },
  };
}
