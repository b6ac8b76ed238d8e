/** Where the time comes from; tests pass a fixed or moving clock. */
export interface Clock {
  now(): Date;
}

/** The system clock. */
export const systemClock: Clock = { now: () => new Date() };

/** A quota window: one UTC day. */
export interface QuotaWindow {
  /** The day as YYYY-MM-DD (UTC): part of every key of the window. */
  readonly day: string;
  /** The first instant of the next window. */
  readonly resetAt: Date;
}

const dayMs = 86_400_000;

/** The UTC day that contains `at`. */
export function windowAt(at: Date): QuotaWindow {
  const start = Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate());
  return {
    day: new Date(start).toISOString().slice(0, 10),
    resetAt: new Date(start + dayMs),
  };
}

/** The UTC day before `window`. */
export function previousWindow(window: QuotaWindow): QuotaWindow {
  return windowAt(new Date(window.resetAt.getTime() - 2 * dayMs));
}
