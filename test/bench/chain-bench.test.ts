import { execFile } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { repoRoot } from "../fixtures/processes.js";

const chainBench = fileURLToPath(new URL("../../bench/chain-bench.ts", import.meta.url));
const resultsDir = fileURLToPath(new URL("../../bench/results/", import.meta.url));

describe("make bench", () => {
  it("prints the README's figures and writes them, with what was measured, under bench/results/", async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--import", "tsx", chainBench],
      {
        cwd: repoRoot,
        env: {
          ...process.env,
          CHATMESH_FROM_SOURCE: "1",
          BENCH_DURATION_S: "1",
          BENCH_WARMUP_S: "0",
          BENCH_CONNECTIONS: "5",
        },
        timeout: 100_000,
      },
    );
    const file = /^figures written to (.*)$/m.exec(stdout)?.[1];
    expect(file, stdout).toBeDefined();
    try {
      expect(file?.startsWith(resultsDir)).toBe(true);
      for (const line of [/^chain +\d+ req\/s +p50 /m, /^chain \/ ceiling = \d\.\d{3} /m])
        expect(stdout).toMatch(line);
      const figures = JSON.parse(readFileSync(file as string, "utf8"));
      expect(figures).toMatchObject({
        commit: expect.stringMatching(/^[0-9a-f]{7,}\+?$/),
        node: process.version,
        client: "autocannon",
        connections: 5,
        duration: 1,
        warmup: 0,
        users: 1_000_000,
        ratio: expect.any(Number),
        allRatio: expect.any(Number),
        failures: [],
      });
      expect(figures.chain.processes.map((p: { name: string }) => p.name)).toEqual([
        "token",
        "filter",
        "llm",
        "history",
        "gateway",
      ]);
      expect(figures.chain.peakRssBytes).toBeGreaterThan(0);
      expect(figures.chain.peakPssBytes).toBeGreaterThan(0);
    } finally {
      if (file !== undefined) rmSync(file, { force: true });
    }
  }, 120_000);
});
