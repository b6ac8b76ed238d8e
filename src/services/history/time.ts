/**
 * Entry times as stored: `YYYY-MM-DD HH:MM:SS.mmm` in UTC. The same text is
 * a DATETIME(3) literal for MySQL and sorts correctly as SQLite TEXT, so both
 * dialects share one code path and keep milliseconds.
 */

/** The earliest storable time (the epoch); earlier ones are refused. */
export const minTimeMs = 0;
/** The latest storable time (DATETIME's upper bound). */
export const maxTimeMs = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

/** Whether `ms` is a whole millisecond the store can keep. */
export const storableTime = (ms: number): boolean =>
  Number.isSafeInteger(ms) && ms >= minTimeMs && ms <= maxTimeMs;

/** Milliseconds since the epoch → the stored text. */
export function timeToDb(ms: number): string {
  return new Date(ms).toISOString().slice(0, 23).replace("T", " ");
}

const stored = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?$/;

/** The stored text (MySQL may drop a zero fraction) → milliseconds since the epoch. */
export function timeFromDb(value: string): number {
  const m = stored.exec(value);
  if (m === null) throw new Error(`unexpected stored time "${value}"`);
  const [, y, mo, d, h, mi, s, frac = "0"] = m.map((part) => part ?? "0");
  const ms = Number(frac.padEnd(3, "0").slice(0, 3));
  return Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), ms);
}
