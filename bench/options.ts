/**
 * The benchmarks' options (environment variables and flags), checked before
 * anything starts: a value that is not what the option takes stops the run
 * with one line naming it, instead of a run on NaN (autocannon's default
 * duration, a soak of no requests that passes) or a stack trace.
 */
import { existsSync } from "node:fs";
import { parseArgs } from "node:util";

/** An option's value that the benchmark cannot take. */
export class OptionError extends Error {}

/**
 * The number `name` holds (`fallback` when unset or empty): a whole number
 * when `whole`, at least `min`, and above it when `aboveMin`.
 */
export function numberOption(
  values: Readonly<Record<string, string | undefined>>,
  name: string,
  fallback: number,
  { min, whole = false, aboveMin = false }: { min: number; whole?: boolean; aboveMin?: boolean },
): number {
  const raw = values[name]?.trim();
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  const ok =
    Number.isFinite(value) &&
    (!whole || Number.isInteger(value)) &&
    (aboveMin ? value > min : value >= min);
  if (!ok) {
    const what = whole ? "a whole number" : "a number";
    throw new OptionError(
      `${name} must be ${what} ${aboveMin ? "above" : "of at least"} ${min}, got ${JSON.stringify(values[name])}`,
    );
  }
  return value;
}

/** `read()`, or, when an option is wrong, its one line on stderr and exit code 2. */
export function optionsOrExit<T>(script: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    if (!(err instanceof OptionError)) throw err;
    console.error(`${script}: ${err.message}`);
    process.exit(2);
  }
}

const whole = (min: number) => ({ min, whole: true });

function protocolOf(url: string): string {
  try {
    return new URL(url).protocol;
  } catch {
    return "";
  }
}

/** What bench/chain-bench.ts (`make bench`) takes from its environment. */
export function chainBenchOptions(env: Readonly<Record<string, string | undefined>>) {
  const client = env.BENCH_CLIENT?.trim() || "autocannon";
  if (client !== "autocannon" && client !== "wrk") {
    throw new OptionError(`BENCH_CLIENT must be autocannon or wrk, got ${JSON.stringify(client)}`);
  }
  const referenceUrl = env.BENCH_REFERENCE_URL?.trim().replace(/\/+$/, "") || undefined;
  if (referenceUrl !== undefined && !/^https?:$/.test(protocolOf(referenceUrl))) {
    throw new OptionError(
      `BENCH_REFERENCE_URL must be an http:// URL such as http://127.0.0.1:8080, got ${JSON.stringify(env.BENCH_REFERENCE_URL)}`,
    );
  }
  const referencePids = (env.BENCH_REFERENCE_PIDS ?? "")
    .split(/[\s,]+/)
    .filter((pid) => pid !== "")
    .map((pid) => {
      // A pid that names no process would show as 0 MB and 0 µs per chat.
      if (!/^[1-9]\d*$/.test(pid) || !existsSync(`/proc/${pid}`)) {
        throw new OptionError(`BENCH_REFERENCE_PIDS: ${JSON.stringify(pid)} is no running process`);
      }
      return Number(pid);
    });
  return {
    connections: numberOption(env, "BENCH_CONNECTIONS", 50, whole(1)),
    duration: numberOption(env, "BENCH_DURATION_S", 10, whole(1)),
    users: numberOption(env, "BENCH_USERS", 1_000_000, whole(1)),
    warmup: numberOption(env, "BENCH_WARMUP_S", 3, whole(0)),
    client,
    wrkThreads: numberOption(env, "BENCH_WRK_THREADS", 2, whole(1)),
    referenceUrl,
    referencePids,
  } as const;
}

/** What bench/soak.ts (`make soak`) takes from its environment. */
export function soakOptions(env: Readonly<Record<string, string | undefined>>) {
  const seconds = numberOption(env, "SOAK_SECONDS", 600, whole(1));
  const sampleSeconds = numberOption(env, "SOAK_SAMPLE_S", 10, { min: 0, aboveMin: true });
  // The verdict compares thirds of the samples: one at the start, one at the end, one between.
  if (seconds < 2 * sampleSeconds) {
    throw new OptionError(
      `SOAK_SECONDS (${seconds}) must be at least twice SOAK_SAMPLE_S (${sampleSeconds}): the memory verdict needs three samples`,
    );
  }
  return {
    seconds,
    rate: numberOption(env, "SOAK_RATE", 100, { min: 0, aboveMin: true }),
    connections: numberOption(env, "SOAK_CONNECTIONS", 20, whole(1)),
    users: numberOption(env, "SOAK_USERS", 2_000, whole(1)),
    sampleSeconds,
    maxGrowth: numberOption(env, "SOAK_MAX_GROWTH", 0.1, { min: 0 }),
  } as const;
}

/** What bench/micro-bench.ts (`make bench-micro`) takes from its environment. */
export function microBenchOptions(env: Readonly<Record<string, string | undefined>>) {
  return {
    seconds: numberOption(env, "MICRO_SECONDS", 3, { min: 0, aboveMin: true }),
    concurrency: numberOption(env, "MICRO_CONCURRENCY", 50, whole(1)),
  } as const;
}

/** What bench/quota-bench.ts (`make bench-quota`) takes from its flags. */
export function quotaBenchOptions(args: readonly string[]) {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: {
        seconds: { type: "string" },
        concurrency: { type: "string" },
        users: { type: "string" },
      },
    }));
  } catch (err) {
    // An unknown flag, a flag without its value, or an argument.
    throw new OptionError((err as Error).message);
  }
  const flags = Object.fromEntries(
    Object.entries(values).map(([name, value]) => [`--${name}`, String(value)]),
  );
  return {
    seconds: numberOption(flags, "--seconds", 5, { min: 0, aboveMin: true }),
    concurrency: numberOption(flags, "--concurrency", 64, whole(1)),
    users: numberOption(flags, "--users", 1000, whole(1)),
  } as const;
}
