import { previousWindow } from "./clock.js";
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
 * A charge as one number, so that the day's charges are a map of strings to
 * numbers and hold no object each: its cost (never negative), or -1 once it
 * was refunded.
 */
type ChargeRecord = number;
const refundedRecord: ChargeRecord = -1;
const isRefunded = (record: ChargeRecord) => record < 0;

interface DayState {
  readonly used: Map<string, number>;
  readonly charges: Map<string, ChargeRecord>;
}

/**
 * The key of a user's charge: the user id's length, a colon, then the two
 * ids, as one flat string. The length says where the user id ends, so no two
 * (user, charge) pairs share a key, whatever characters the ids hold (with a
 * NUL between them, user "a\0b" with charge "c" was user "a" with charge
 * "b\0c": one could refund the other's charge). A template literal would make
 * a rope of the parts (V8's ConsString) that the map keeps beside its
 * flattened copy, ~50 bytes more per charge.
 */
const chargeKey = (userId: string, chargeId: string) =>
  [userId.length, ":", userId, chargeId].join("");

/**
 * The embedded quota store: counters in this process's memory. Exact for one
 * token process (Node runs each charge to completion); replicas need the Redis
 * store. When a new day is seen, every day but it and the one before is
 * dropped (the day before stays for refunds across midnight), so memory holds
 * at most two days of users. Each charge id is kept for its day and the next
 * (a retry is charged once, whenever it comes) in about 100 bytes: a string
 * key and a number.
 */
export function createMemoryQuotaStore(): QuotaStore {
  const days = new Map<string, DayState>();

  const dayState = (input: PeekInput): DayState => {
    let state = days.get(input.window.day);
    if (state === undefined) {
      const keep = previousWindow(input.window).day;
      for (const day of days.keys()) if (day !== keep) days.delete(day);
      state = { used: new Map(), charges: new Map() };
      days.set(input.window.day, state);
    }
    return state;
  };
  /** A charge in the window given or the one before (for calls just after midnight). */
  const findCharge = (input: RefundInput | ChargeInput) => {
    const key = chargeKey(input.userId, input.chargeId);
    const today = days.get(input.window.day);
    const record = today?.charges.get(key);
    if (today !== undefined && record !== undefined) return { state: today, key, record };
    const before = days.get(previousWindow(input.window).day);
    const earlier = before?.charges.get(key);
    return before !== undefined && earlier !== undefined
      ? { state: before, key, record: earlier }
      : undefined;
  };

  /** What the user has used in the input's (current) window. */
  const usedNow = (input: RefundInput) => days.get(input.window.day)?.used.get(input.userId) ?? 0;

  return {
    async charge(input: ChargeInput): Promise<ChargeResult> {
      const state = dayState(input);
      const used = state.used.get(input.userId) ?? 0;
      // A charge id is charged at most once, whatever became of it since,
      // also when its retry comes just after midnight.
      if (input.chargeId !== "" && findCharge(input) !== undefined) {
        return { allowed: true, used, repeated: true };
      }
      if (used + input.cost > input.limit) return { allowed: false, used };
      state.used.set(input.userId, used + input.cost);
      if (input.chargeId !== "") {
        state.charges.set(chargeKey(input.userId, input.chargeId), input.cost);
      }
      return { allowed: true, used: used + input.cost };
    },

    async refund(input: RefundInput): Promise<RefundResult> {
      const found = findCharge(input);
      if (found === undefined) {
        return { refunded: 0, used: usedNow(input) };
      }
      const { state, key, record } = found;
      if (isRefunded(record)) return { refunded: 0, used: usedNow(input) };
      state.charges.set(key, refundedRecord);
      state.used.set(input.userId, Math.max(0, (state.used.get(input.userId) ?? 0) - record));
      return { refunded: record, used: usedNow(input) };
    },

    async settle(input: SettleInput): Promise<SettleResult> {
      const found = findCharge(input);
      if (found === undefined || isRefunded(found.record)) return { settled: false, used: 0 };
      const { state, key, record } = found;
      const after = Math.max(0, (state.used.get(input.userId) ?? 0) + input.cost - record);
      state.charges.set(key, input.cost);
      state.used.set(input.userId, after);
      return { settled: true, used: usedNow(input) };
    },

    async get(input: PeekInput): Promise<number> {
      return days.get(input.window.day)?.used.get(input.userId) ?? 0;
    },

    async close() {
      days.clear();
    },
  };
}
