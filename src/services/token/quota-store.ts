import type { QuotaWindow } from "./clock.js";

export interface ChargeInput {
  readonly userId: string;
  readonly window: QuotaWindow;
  readonly cost: number;
  readonly limit: number;
  /** Non-empty: the charge is recorded so that it can be refunded, and a retry charges once. */
  readonly chargeId: string;
}

export interface ChargeResult {
  /** False when the charge would have gone over the limit; nothing was charged then. */
  readonly allowed: boolean;
  /** Tokens used in the window after the charge (or, when refused, without it). */
  readonly used: number;
}

export interface RefundInput {
  readonly userId: string;
  readonly chargeId: string;
}

export interface RefundResult {
  /** The amount given back: 0 for an unknown or already refunded charge. */
  readonly refunded: number;
  /** Tokens used in the charge's window after the refund (0 when unknown). */
  readonly used: number;
}

/**
 * Where quota counters live. Every implementation makes `charge` atomic: two
 * concurrent charges can never both fit in the room left for one.
 */
export interface QuotaStore {
  charge(input: ChargeInput): Promise<ChargeResult>;
  refund(input: RefundInput): Promise<RefundResult>;
  close(): Promise<void>;
}
