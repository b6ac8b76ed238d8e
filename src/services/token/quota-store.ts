import type { QuotaWindow } from "./clock.js";

export interface ChargeInput {
  readonly userId: string;
  readonly window: QuotaWindow;
  readonly cost: number;
  readonly limit: number;
  /**
   * Non-empty: the charge is recorded so that it can be refunded, and a retry
   * charges once (also a retry just after midnight of a charge made before).
   */
  readonly chargeId: string;
}

export type ChargeResult =
  | {
      /** False when the charge would have gone over the limit; nothing was charged then. */
      readonly allowed: boolean;
      /** Tokens used in the window after the charge (or, when refused, without it). */
      readonly used: number;
      readonly repeated?: false;
    }
  | {
      readonly allowed: true;
      readonly used: number;
      /** The charge id had been charged already: nothing was charged now. */
      readonly repeated: true;
      /** What that charge costs now: as settled, 0 once refunded. */
      readonly cost: number;
    };

export interface RefundInput {
  readonly userId: string;
  readonly chargeId: string;
  /**
   * The window at the time of the refund. The charge is looked for in it and
   * in the window before, so a refund just after midnight still finds a
   * charge made just before.
   */
  readonly window: QuotaWindow;
}

export interface RefundResult {
  /** The amount given back: 0 for an unknown or already refunded charge. */
  readonly refunded: number;
  /**
   * Tokens used in the current window (`window`) after the refund: what the
   * user has spent of today's quota, whichever day the charge was in.
   */
  readonly used: number;
}

export interface SettleInput {
  readonly userId: string;
  readonly chargeId: string;
  /** What the charge costs in the end. */
  readonly cost: number;
  /** The window at the time of settling; the charge is looked for as by refund. */
  readonly window: QuotaWindow;
}

export interface SettleResult {
  /** False when no such charge exists or it was refunded: nothing changed. */
  readonly settled: boolean;
  /**
   * Tokens used in the current window (`window`) after settling, whichever
   * day the charge was in (0 when not settled).
   */
  readonly used: number;
}

export interface PeekInput {
  readonly userId: string;
  readonly window: QuotaWindow;
}

/**
 * Where quota counters live. Every implementation makes `charge` atomic: two
 * concurrent charges can never both fit in the room left for one. A charge id
 * is charged at most once (a retry finds it in its window or the one after),
 * and refunded at most once, only to the user it was charged to. A refund of
 * a charge id not charged yet is kept: the charge, if it lands later (a call
 * the caller gave up on), charges nothing.
 */
export interface QuotaStore {
  charge(input: ChargeInput): Promise<ChargeResult>;
  refund(input: RefundInput): Promise<RefundResult>;
  /**
   * Sets a charge's cost to what the chat really used: the counter moves by
   * the difference, past the limit if need be (never below 0). Settling to
   * the cost the charge has already changes nothing; a later refund gives
   * back the settled cost.
   */
  settle(input: SettleInput): Promise<SettleResult>;
  /** Tokens used by the user in the window, without charging anything. */
  get(input: PeekInput): Promise<number>;
  close(): Promise<void>;
}

/**
 * The store cannot be reached or did not answer in time. The caller may retry
 * (charges with an id are idempotent), or fail open if so configured.
 */
export class QuotaStoreUnavailableError extends Error {
  override name = "QuotaStoreUnavailableError";
  /**
   * Whether the command was sent, so that the store may still run it (it
   * timed out, or the connection was lost before an answer came): a charge
   * may then have been made.
   */
  readonly mayHaveRun: boolean;

  constructor(message: string, options: ErrorOptions & { mayHaveRun?: boolean } = {}) {
    super(message, options);
    this.mayHaveRun = options.mayHaveRun ?? false;
  }
}
