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

/** The last window worked out, and its bounds: most calls fall in it. */
let last: { start: number; end: number; window: QuotaWindow } | undefined;

/**
 * The UTC day that contains `at`. The same window object for every instant
 * of a day: working it out (dates, a string) took ~5 % of the token
 * service's CPU under `make bench` when done for every call.
 */
export function windowAt(at: Date): QuotaWindow {
  const t = at.getTime();
  if (last !== undefined && t >= last.start && t < last.end) return last.window;
  const start = Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate());
  const window = Object.freeze({
    day: new Date(start).toISOString().slice(0, 10),
    resetAt: new Date(start + dayMs),
  });
  last = { start, end: start + dayMs, window };
  return window;
}

/** The UTC day before `window`. */
export function previousWindow(window: QuotaWindow): QuotaWindow {
  return windowAt(new Date(window.resetAt.getTime() - 2 * dayMs));
}
