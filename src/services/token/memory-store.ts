import type {
  ChargeInput,
  ChargeResult,
  QuotaStore,
  RefundInput,
  RefundResult,
} from "./quota-store.js";

interface ChargeRecord {
  readonly cost: number;
  refunded: boolean;
}

interface DayState {
  readonly used: Map<string, number>;
  readonly charges: Map<string, ChargeRecord>;
}

/**
 * The embedded quota store: counters in this process's memory. Exact for one
 * token process (Node runs each charge to completion); replicas need the Redis
 * store. Days other than the current one are dropped as soon as a new day is
 * seen, so memory holds one day of users.
 */
export function createMemoryQuotaStore(): QuotaStore {
  const days = new Map<string, DayState>();

  const dayState = (day: string): DayState => {
    let state = days.get(day);
    if (state === undefined) {
      // A new day: the previous ones can be neither charged nor refunded any more.
      days.clear();
      state = { used: new Map(), charges: new Map() };
      days.set(day, state);
    }
    return state;
  };
  const chargeKey = (userId: string, chargeId: string) => `${userId}\u0000${chargeId}`;

  return {
    async charge(input: ChargeInput): Promise<ChargeResult> {
      const state = dayState(input.window.day);
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
      for (const state of days.values()) {
        const record = state.charges.get(chargeKey(input.userId, input.chargeId));
        if (record === undefined) continue;
        const used = state.used.get(input.userId) ?? 0;
        if (record.refunded) return { refunded: 0, used };
        record.refunded = true;
        const after = Math.max(0, used - record.cost);
        state.used.set(input.userId, after);
        return { refunded: record.cost, used: after };
      }
      return { refunded: 0, used: 0 };
    },

    async close() {
      days.clear();
    },
  };
}
