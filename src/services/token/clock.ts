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

/** The window of the UTC day that starts at `start` (ms). */
const dayWindow = (start: number): QuotaWindow =>
  Object.freeze({
    day: new Date(start).toISOString().slice(0, 10),
    resetAt: new Date(start + dayMs),
  });

/** The last window worked out, and its bounds: most calls fall in it. */
let last: { start: number; end: number; window: QuotaWindow } | undefined;
/** The last window asked for the day before of, and that day. */
let lastBefore: { of: string; window: QuotaWindow } | undefined;

/**
 * The UTC day that contains `at`. The same window object for every instant
 * of a day (and previousWindow the same for every window of a day): working
 * it out (dates, a string) took ~5 % of the token service's CPU under
 * `make bench` when done for every call.
 */
export function windowAt(at: Date): QuotaWindow {
  const t = at.getTime();
  if (last !== undefined && t >= last.start && t < last.end) return last.window;
  const start = Math.floor(t / dayMs) * dayMs;
  last = { start, end: start + dayMs, window: dayWindow(start) };
  return last.window;
}

/** The UTC day before `window`. */
export function previousWindow(window: QuotaWindow): QuotaWindow {
  if (lastBefore?.of !== window.day) {
    const before = dayWindow(window.resetAt.getTime() - 2 * dayMs);
    lastBefore = { of: window.day, window: before };
  }
  return lastBefore.window;
}
