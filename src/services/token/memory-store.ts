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

interface ChargeRecord {
  cost: number;
  refunded: boolean;
}

interface DayState {
  readonly used: Map<string, number>;
  readonly charges: Map<string, ChargeRecord>;
}

/**
 * The embedded quota store: counters in this process's memory. Exact for one
 * token process (Node runs each charge to completion); replicas need the Redis
 * store. When a new day is seen, every day but it and the one before is
 * dropped (the day before stays for refunds across midnight), so memory holds
 * at most two days of users.
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
  const chargeKey = (userId: string, chargeId: string) => `${userId}\u0000${chargeId}`;
  /** A charge in the window given or the one before (for calls just after midnight). */
  const findCharge = (input: RefundInput) => {
    for (const window of [input.window, previousWindow(input.window)]) {
      const state = days.get(window.day);
      const record = state?.charges.get(chargeKey(input.userId, input.chargeId));
      if (state !== undefined && record !== undefined) return { state, record };
    }
    return undefined;
  };

  return {
    async charge(input: ChargeInput): Promise<ChargeResult> {
      const state = dayState(input);
      const used = state.used.get(input.userId) ?? 0;
      if (input.chargeId !== "") {
        const seen = state.charges.get(chargeKey(input.userId, input.chargeId));
        // A charge id is charged at most once, whatever became of it since.
        if (seen !== undefined) return { allowed: true, used };
      }
      if (used + input.cost > input.limit) return { allowed: false, used };
      state.used.set(input.userId, used + input.cost);
      if (input.chargeId !== "") {
        state.charges.set(chargeKey(input.userId, input.chargeId), {
          cost: input.cost,
          refunded: false,
        });
      }
      return { allowed: true, used: used + input.cost };
    },

    async refund(input: RefundInput): Promise<RefundResult> {
      const found = findCharge(input);
      if (found === undefined) return { refunded: 0, used: 0 };
      const { state, record } = found;
      const used = state.used.get(input.userId) ?? 0;
      if (record.refunded) return { refunded: 0, used };
      record.refunded = true;
      const after = Math.max(0, used - record.cost);
      state.used.set(input.userId, after);
      return { refunded: record.cost, used: after };
    },

    async settle(input: SettleInput): Promise<SettleResult> {
      const found = findCharge(input);
      if (found === undefined || found.record.refunded) return { settled: false, used: 0 };
      const { state, record } = found;
      const after = Math.max(0, (state.used.get(input.userId) ?? 0) + input.cost - record.cost);
      record.cost = input.cost;
      state.used.set(input.userId, after);
      return { settled: true, used: after };
    },

    async get(input: PeekInput): Promise<number> {
      return days.get(input.window.day)?.used.get(input.userId) ?? 0;
    },

    async close() {
      days.clear();
    },
  };
}
