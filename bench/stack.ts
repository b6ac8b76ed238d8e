import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { constants, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const bin = fileURLToPath(new URL("../bin/chatmesh.js", import.meta.url));

import { freePort } from "../src/dev/ports.js";
import { processEnvFor } from "../src/lib/node-options.js";

export { freePort };

/** Resolves once `check` does, trying every 50 ms until `timeoutMs` has passed. */
export async function waitFor(
  what: string,
  check: () => Promise<unknown>,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Polls GET `path` (/healthz) until it answers 2xx; each probe gets a second. */
export function waitHealthy(port: number, timeoutMs = 30_000, path = "/healthz"): Promise<void> {
  return waitFor(
    `port ${port} not healthy`,
    async () => {
      const res = await fetch(`http://127.0.0.1:${port}${path}`, {
        signal: AbortSignal.timeout(1000),
      });
      if (!res.ok) throw new Error("not ok");
    },
    timeoutMs,
  );
}

/** Resident set size of a process in bytes (Linux), 0 when gone. */
export function rssOf(pid: number | undefined): number {
  return memoryOf(pid).rss;
}

/**
 * A process's resident memory (Linux), zeros when gone: `rss` counts every
 * page it maps, `pss` divides the pages it shares (the node binary's code,
 * say) among the processes sharing them, so the PSS of several processes adds
 * up to the memory they use together.
 */
export function memoryOf(pid: number | undefined): { rss: number; pss: number } {
  if (pid === undefined) return { rss: 0, pss: 0 };
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    const kb = (field: string) =>
      Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(rollup)?.[1] ?? 0);
    return { rss: kb("Rss") * 1024, pss: kb("Pss") * 1024 };
  } catch {
    return { rss: 0, pss: 0 };
  }
}

/** CPU time (user + system) a process has used, in ms (Linux), 0 when gone. */
export function cpuTimeMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    // Fields 14 and 15 of /proc/<pid>/stat, after the command in parentheses,
    // in clock ticks (USER_HZ, 100 a second on Linux).
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return 0;
  }
}

// BENCH_CPU_PROF_DIR=dir: every process writes a CPU profile there when it stops.
const profileDir = process.env.BENCH_CPU_PROF_DIR;
const nodeArgs = profileDir ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] : [];

/** Starts `chatmesh <name>` quietly; its stderr is kept for errors. */
export function startProcess(name: string, env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [...nodeArgs, bin, name], {
    env: processEnvFor(name, { ...process.env, LOG_LEVEL: "warn", ...env }),
    stdio: ["ignore", "ignore", "inherit"],
  });
  return child;
}

const names = ["token", "filter", "llm", "history", "gateway"] as const;
type Name = (typeof names)[number];

/** The environment of the chain on free ports, its history in a new directory. */
async function chainEnv(extraEnv: Record<string, string>) {
  catchInterrupts();
  const ports = Object.fromEntries(
    await Promise.all(names.map(async (n) => [n, await freePort()])),
  ) as Record<Name, number>;
  // Made in the same turn as the processes and the stop that removes it.
  const dataDir = mkdtempSync(join(tmpdir(), "chatmesh-bench-"));
  const env: Record<string, string> = {
    TOKEN_PORT: String(ports.token),
    FILTER_PORT: String(ports.filter),
    LLM_PORT: String(ports.llm),
    GATEWAY_PORT: String(ports.gateway),
    TOKEN_URL: `http://127.0.0.1:${ports.token}`,
    FILTER_URL: `http://127.0.0.1:${ports.filter}`,
    LLM_URL: `http://127.0.0.1:${ports.llm}`,
    HISTORY_PORT: String(ports.history),
    HISTORY_URL: `http://127.0.0.1:${ports.history}`,
    HISTORY_DATABASE_URL: `sqlite:${join(dataDir, "history.db")}`,
    QUOTA_LIMIT: String(Number.MAX_SAFE_INTEGER),
    ...extraEnv,
  };
  return { dataDir, ports, env };
}

const interruptStops = new Set<() => unknown>();
let installed = false;
let interrupted = false;

/**
 * Runs `stop` if this process gets SIGINT, SIGTERM or SIGHUP before the
 * returned function is called, then exits (128 + the signal's number). A
 * bench interrupted on its own (`kill -INT`, a CI timeout, a closed terminal,
 * whose SIGHUP the chatmesh processes ignore) otherwise left the processes it
 * started serving, and their data directories behind.
 */
export function stopOnInterrupt(stop: () => unknown): () => void {
  catchInterrupts();
  interruptStops.add(stop);
  return () => interruptStops.delete(stop);
}

/**
 * Takes SIGINT, SIGTERM and SIGHUP from their default action (the process
 * ends at once) to stopOnInterrupt's stops. Called before a process is
 * started: from then on a signal waits for the code that starts it to
 * register its stop.
 */
function catchInterrupts(): void {
  if (installed) return;
  installed = true;
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(signal, () => {
      if (interrupted) return;
      interrupted = true;
      void Promise.allSettled([...interruptStops].map(async (s) => s())).then(() =>
        process.exit(128 + (constants.signals[signal] ?? 0)),
      );
    });
  }
}

function stopAll(children: readonly ChildProcess[], dataDir: string) {
  const stop = async () => {
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            c.once("exit", () => resolve());
            c.kill("SIGTERM");
          }),
      ),
    );
    rmSync(dataDir, { recursive: true, force: true });
  };
  const forget = stopOnInterrupt(stop);
  return async () => {
    forget();
    await stop();
  };
}

/**
 * Waits until every port answers /healthz. A process that exits first (it
 * could not bind its port, say) fails the wait at once, and everything
 * started is stopped.
 */
async function healthyOrStopped(
  processes: Readonly<Record<string, ChildProcess>>,
  ports: readonly number[],
  stop: () => Promise<void>,
): Promise<void> {
  const exited = Object.entries(processes).map(
    ([name, child]) =>
      new Promise<never>((_, reject) =>
        child.once("exit", (code, signal) =>
          reject(new Error(`chatmesh ${name} exited (${signal ?? code}) before it was healthy`)),
        ),
      ),
  );
  try {
    await Promise.race([Promise.all(ports.map((port) => waitHealthy(port))), ...exited]);
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The chain as separate processes on free ports. */
export async function startChain(extraEnv: Record<string, string> = {}) {
  const { dataDir, ports, env } = await chainEnv(extraEnv);
  const children = Object.fromEntries(names.map((n) => [n, startProcess(n, env)])) as Record<
    Name,
    ChildProcess
  >;
  const stop = stopAll(Object.values(children), dataDir);
  await healthyOrStopped(children, Object.values(ports), stop);
  return {
    url: `http://127.0.0.1:${ports.gateway}`,
    ports,
    /** Each process by name. */
    children,
    pids: names.map((n) => children[n].pid),
    /** The processes' names, as `pids` lists them. */
    names: [...names],
    stop,
  };
}

/** The chain in one process (`chatmesh all`) on free ports. */
export async function startAllInOne(extraEnv: Record<string, string> = {}) {
  const { dataDir, ports, env } = await chainEnv(extraEnv);
  const child = startProcess("all", env);
  const stop = stopAll([child], dataDir);
  await healthyOrStopped({ all: child }, Object.values(ports), stop);
  return {
    url: `http://127.0.0.1:${ports.gateway}`,
    ports,
    pids: [child.pid],
    names: ["all"],
    stop,
  };
}
