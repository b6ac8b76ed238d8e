import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { constants } from "node:os";
import { fileURLToPath } from "node:url";
import { describe, expect, it, vi } from "vitest";
import { endsWithWorker, repoRoot, watchChild } from "../fixtures/processes.js";

const benchScript = (name: string) =>
  fileURLToPath(new URL(`../../bench/${name}`, import.meta.url));

/** The `chatmesh` processes `pid` started (Linux). */
function chatmeshChildrenOf(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`)
    .flatMap((task) => readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").split(" "))
    .filter((child) => child.trim() !== "")
    .map(Number)
    .filter((child) => readFileSync(`/proc/${child}/cmdline`, "utf8").includes("chatmesh.js"));
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** The directory of a chain process's history database, from its environment. */
const dataDirOf = (pid: number) =>
  /HISTORY_DATABASE_URL=sqlite:(.*)\/history\.db/.exec(
    readFileSync(`/proc/${pid}/environ`, "utf8").replaceAll("\0", "\n"),
  )?.[1];

describe("make bench and make soak interrupted", () => {
  // Each signalled once its processes started; the soak once it has said it runs.
  it.each([
    ["chain-bench.ts", "SIGINT", /^/],
    ["chain-bench.ts", "SIGHUP", /^/],
    ["soak.ts", "SIGINT", /chatmesh soak:/],
  ] as const)(
    "%s by %s on its own stops the processes it started and removes their data",
    async (script, signal, running) => {
      const bench = endsWithWorker(
        spawn(process.execPath, ["--import", "tsx", benchScript(script)], {
          cwd: repoRoot,
          env: {
            ...process.env,
            CHATMESH_FROM_SOURCE: "1",
            BENCH_DURATION_S: "120",
            BENCH_WARMUP_S: "0",
            SOAK_SECONDS: "120",
            SOAK_RATE: "10",
          },
          stdio: ["ignore", "pipe", "pipe"],
        }),
      );
      const { output, exited } = watchChild(bench);
      let started: number[] = [];
      try {
        await vi.waitFor(
          () => {
            started = chatmeshChildrenOf(bench.pid as number);
            expect(started, output()).toHaveLength(5);
            expect(output()).toMatch(running);
          },
          { timeout: 30_000, interval: 100 },
        );
        const dataDir = dataDirOf(started[0] as number);
        expect(dataDir).toBeDefined();
        bench.kill(signal);
        expect(await exited, output()).toBe(128 + constants.signals[signal]);
        // The stop's own exits are not reported as processes that failed.
        expect(output()).not.toMatch(/exited/);
        expect(started.filter(alive)).toEqual([]);
        expect(existsSync(dataDir as string)).toBe(false);
      } finally {
        // What the bench left running, if it did.
        for (const pid of started.filter(alive)) process.kill(pid, "SIGKILL");
        bench.kill("SIGKILL");
      }
    },
    60_000,
  );
});
