import type autocannon from "autocannon";

/** What one load measured. */
export interface Figures {
  /** Answers with a 2xx status per second: the chats served, what the ratios compare. */
  readonly requestsPerSec: number;
  /** Latency percentiles, in ms. */
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  /** Answers with another status: a refused chat (429, 500…) is no chat served. */
  readonly non2xx: number;
  /** Requests without an answer: connection errors and timeouts. */
  readonly errors: number;
  /** Answers of any status. */
  readonly total: number;
}

/** The figures of an autocannon run. */
export function autocannonFigures(result: autocannon.Result): Figures {
  const total = result.requests.total;
  return {
    // autocannon's mean of its per-second counts of answers, of the 2xx share.
    requestsPerSec: total === 0 ? 0 : (result.requests.average * result["2xx"]) / total,
    p50: result.latency.p50,
    p90: result.latency.p90,
    p99: result.latency.p99,
    non2xx: result.non2xx,
    // autocannon counts its timeouts among its errors already.
    errors: result.errors,
    total,
  };
}

/** The figures of a wrk run, from the JSON line its `done` hook prints (µs). */
export function wrkFigures(f: Readonly<Record<string, number | undefined>>): Figures {
  const ms = (us: number | undefined) => Math.round((us ?? 0) / 1000);
  const total = f.total ?? 0;
  const non2xx = f.non2xx ?? 0;
  return {
    requestsPerSec: ((total - non2xx) * 1e6) / (f.us ?? 1),
    p50: ms(f.p50),
    p90: ms(f.p90),
    p99: ms(f.p99),
    non2xx,
    errors: f.errors ?? 0,
    total,
  };
}

/**
 * One line per load that got a non-2xx answer or none: its figures are not
 * those of the chats it was meant to measure, so the run fails.
 */
export function failedLoads(loads: Readonly<Record<string, Figures | undefined>>): string[] {
  return Object.entries(loads).flatMap(([name, f]) =>
    f === undefined || (f.non2xx === 0 && f.errors === 0)
      ? []
      : [`${name}: ${f.non2xx} non-2xx answers and ${f.errors} requests without an answer`],
  );
}
