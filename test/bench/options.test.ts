import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import {
  chainBenchOptions,
  OptionError,
  quotaBenchOptions,
  soakOptions,
} from "../../bench/options.js";
import { repoRoot } from "../fixtures/processes.js";

/** Runs bench/`script` with `env` added and `args`; its exit code and what it printed. */
async function runBench(script: string, env: Record<string, string>, args: string[] = []) {
  const path = fileURLToPath(new URL(`../../bench/${script}`, import.meta.url));
  return promisify(execFile)(process.execPath, ["--import", "tsx", path, ...args], {
    cwd: repoRoot,
    env: { ...process.env, ...env },
    timeout: 20_000,
  }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (err: { code?: number; stdout: string; stderr: string }) => ({
      code: err.code,
      stdout: err.stdout,
      stderr: err.stderr,
    }),
  );
}

describe("the benchmarks' options", () => {
  it.each([
    ["chain-bench.ts", { BENCH_DURATION_S: "abc" }, [], /^make bench: BENCH_DURATION_S .*"abc"$/],
    ["soak.ts", { SOAK_SECONDS: "abc" }, [], /^make soak: SOAK_SECONDS .*"abc"$/],
    ["micro-bench.ts", { MICRO_SECONDS: "0" }, [], /^make bench-micro: MICRO_SECONDS .*"0"$/],
    ["quota-bench.ts", {}, ["--seconds", "abc"], /^make bench-quota: --seconds .*"abc"$/],
    ["quota-bench.ts", {}, ["--duration", "5"], /^make bench-quota: Unknown option '--duration'/],
  ])("%s %j %j stops at once with one line naming the option", async (script, env, args, line) => {
    const result = await runBench(script, env, args);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr.trim().split("\n")).toEqual([expect.stringMatching(line)]);
  });

  it("take the README's defaults when unset or empty", () => {
    expect(chainBenchOptions({ BENCH_CONNECTIONS: "" })).toEqual({
      connections: 50,
      duration: 10,
      users: 1_000_000,
      warmup: 3,
      client: "autocannon",
      wrkThreads: 2,
      referenceUrl: undefined,
      referencePids: [],
    });
    expect(soakOptions({})).toMatchObject({ seconds: 600, rate: 100, maxGrowth: 0.1 });
    expect(quotaBenchOptions([])).toEqual({ seconds: 5, concurrency: 64, users: 1000 });
  });

  it.each([
    { BENCH_CONNECTIONS: "1.5" },
    { BENCH_USERS: "0" },
    { BENCH_WARMUP_S: "-1" },
    { BENCH_DURATION_S: "10s" },
    { BENCH_WRK_THREADS: "two" },
    { BENCH_REFERENCE_URL: "127.0.0.1:8080" },
    { BENCH_REFERENCE_PIDS: "1 abc" },
    { BENCH_REFERENCE_PIDS: "2147483646" },
  ])("refuse %j", (env) => {
    expect(() => chainBenchOptions(env)).toThrow(OptionError);
  });

  it("take a reference gateway and its running processes", () => {
    const options = chainBenchOptions({
      BENCH_REFERENCE_URL: "http://127.0.0.1:9/",
      BENCH_REFERENCE_PIDS: `${process.pid}, ${process.ppid}`,
      BENCH_WARMUP_S: "0",
    });
    expect(options).toMatchObject({
      referenceUrl: "http://127.0.0.1:9",
      referencePids: [process.pid, process.ppid],
      warmup: 0,
    });
  });

  it.each([{ SOAK_RATE: "0" }, { SOAK_SAMPLE_S: "x" }, { SOAK_MAX_GROWTH: "-0.1" }])(
    "refuse the soak's %j",
    (env) => {
      expect(() => soakOptions(env)).toThrow(OptionError);
    },
  );
});
