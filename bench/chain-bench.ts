/**
 * `make bench`: the whole chain (gateway → filter → token → llm, and the
 * history append, as separate processes) under autocannon, then the same
 * chain in one process (`chatmesh all`), then a bare Fastify server answering
 * the same JSON (the ceiling of one HTTP hop), in the same run. Prints requests/s,
 * latency percentiles, errors, peak RSS and PSS of our processes (and each
 * process's peak RSS and CPU time per chat) and the ratio chain / ceiling;
 * writes the figures to bench/results/. Requests/s count 2xx answers only;
 * a load that got any other answer, or none, fails the run (exit code 1).
 *
 * Options (env): BENCH_CONNECTIONS (50), BENCH_DURATION_S (10),
 * BENCH_USERS (1000000), BENCH_WARMUP_S (3). BENCH_CLIENT=wrk drives every
 * load with wrk (BENCH_WRK_THREADS, 2 as wrk's own default) instead of
 * autocannon: the client the Go original's reported figures came from,
 * which takes far less CPU from the machine than autocannon does. BENCH_REFERENCE_URL names
 * another chat gateway already running (another build, or another
 * implementation of the same POST /chat) to measure under the same load in the
 * same run; BENCH_REFERENCE_PIDS (space or comma separated) are its processes,
 * for its peak memory and CPU time per chat.
 */
import { execFile, execFileSync, fork } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import autocannon from "autocannon";
import { autocannonFigures, type Figures, failedLoads, wrkFigures } from "./figures.js";
import { chainBenchOptions, optionsOrExit } from "./options.js";
import {
  cpuTimeMs,
  freePort,
  memoryOf,
  startAllInOne,
  startChain,
  stopOnInterrupt,
} from "./stack.js";

const { connections, duration, users, warmup, client, wrkThreads, referenceUrl, referencePids } =
  optionsOrExit("make bench", () => chainBenchOptions(process.env));
const text = "Hello   world   from   Go!";

/** The commit measured, with "+" when the tree differs from it; undefined outside a git clone. */
function commitOf(): string | undefined {
  try {
    const git = (...args: string[]) =>
      execFileSync("git", args, {
        cwd: fileURLToPath(new URL(".", import.meta.url)),
        stdio: ["ignore", "pipe", "ignore"],
      }).toString();
    const dirty = git("status", "--porcelain", "--untracked-files=no").trim() !== "";
    return `${git("rev-parse", "--short", "HEAD").trim()}${dirty ? "+" : ""}`;
  } catch {
    return undefined;
  }
}

/** A process's command name (/proc/<pid>/comm), or its pid when it cannot be read. */
function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return String(pid);
  }
}

function load(url: string, seconds: number): Promise<Figures> {
  return client === "wrk" ? loadWithWrk(url, seconds) : loadWithAutocannon(url, seconds);
}

async function loadWithAutocannon(url: string, seconds: number): Promise<Figures> {
  let n = 0;
  const result = await autocannon({
    url: `${url}/chat`,
    connections,
    duration: seconds,
    requests: [
      {
        method: "POST",
        headers: { "content-type": "application/json" },
        setupRequest: (req) => {
          n = (n + 1) % users;
          return { ...req, body: `{"user_id":"u${n}","text":"${text}"}` };
        },
      },
    ],
  });
  return autocannonFigures(result);
}

/**
 * The same load from wrk: each thread walks its own stride of the user pool,
 * and its `done` hook prints the figures as one JSON line.
 */
const wrkScript =
  client === "wrk" ? join(mkdtempSync(join(os.tmpdir(), "chatmesh-wrk-")), "chat.lua") : "";
if (client === "wrk") {
  process.once("exit", () => rmSync(dirname(wrkScript), { recursive: true, force: true }));
  writeFileSync(
    wrkScript,
    `local threads, users, n = ${wrkThreads}, ${users}, 0
local counter = 0
setup = function(thread)
  thread:set("first", counter)
  counter = counter + 1
end
init = function()
  n = first or 0
end
request = function()
  n = (n + threads) % users
  return wrk.format("POST", "/chat", { ["content-type"] = "application/json" },
    '{"user_id":"u' .. n .. '","text":"${text}"}')
end
done = function(summary, latency)
  local e = summary.errors
  io.write(string.format('{"total":%d,"us":%d,"p50":%d,"p90":%d,"p99":%d,"non2xx":%d,"errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
`,
  );
}

async function loadWithWrk(url: string, seconds: number): Promise<Figures> {
  const { stdout } = await promisify(execFile)("wrk", [
    `-t${wrkThreads}`,
    `-c${connections}`,
    `-d${seconds}s`,
    "--timeout",
    "10s",
    "-s",
    wrkScript,
    `${url}/chat`,
  ]).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT")
      throw new Error("BENCH_CLIENT=wrk: wrk is not installed (apt-get install wrk)");
    throw err;
  });
  const line = stdout.split("\n").find((l) => l.startsWith('{"total"'));
  if (line === undefined) throw new Error(`wrk printed no figures:\n${stdout}`);
  return wrkFigures(JSON.parse(line) as Record<string, number>);
}

/** One process's share of a measured load. */
interface ProcessFigures {
  readonly name: string;
  readonly peakRssBytes: number;
  /** CPU time (user + system) per request answered, in µs. */
  readonly cpuUsPerRequest: number;
}

/**
 * Runs the warm-up and the measured load, sampling the peak memory of `pids`
 * meanwhile (of all together, and of each), and the CPU time each used.
 */
async function measure(url: string, pids: readonly (number | undefined)[], names: string[] = []) {
  if (warmup > 0) await load(url, warmup);
  let peakRss = 0;
  let peakPss = 0;
  const peakEach = pids.map(() => 0);
  const cpuBefore = pids.map(cpuTimeMs);
  const sampler = setInterval(() => {
    let rss = 0;
    let pss = 0;
    pids.forEach((pid, i) => {
      const memory = memoryOf(pid);
      rss += memory.rss;
      pss += memory.pss;
      peakEach[i] = Math.max(peakEach[i] as number, memory.rss);
    });
    peakRss = Math.max(peakRss, rss);
    peakPss = Math.max(peakPss, pss);
  }, 250);
  try {
    const figures = await load(url, duration);
    const processes: ProcessFigures[] = pids.map((pid, i) => ({
      name: names[i] ?? String(pid),
      peakRssBytes: peakEach[i] as number,
      cpuUsPerRequest:
        ((cpuTimeMs(pid) - (cpuBefore[i] as number)) * 1000) / Math.max(1, figures.total),
    }));
    return { ...figures, peakRssBytes: peakRss, peakPssBytes: peakPss, processes };
  } finally {
    clearInterval(sampler);
  }
}

async function measureStack(start: typeof startChain | typeof startAllInOne) {
  const chain = await start();
  try {
    return await measure(chain.url, chain.pids, chain.names);
  } finally {
    await chain.stop();
  }
}

async function measureCeiling() {
  const server = fork(fileURLToPath(new URL("./ceiling-server.ts", import.meta.url)), {
    env: { ...process.env, PORT: String(await freePort()) },
    execArgv: ["--import", "tsx"],
  });
  const forget = stopOnInterrupt(() => server.kill("SIGTERM"));
  const port = await new Promise<number>((resolve) =>
    server.once("message", (m) => resolve((m as { port: number }).port)),
  );
  try {
    const url = `http://127.0.0.1:${port}`;
    if (warmup > 0) await load(url, warmup);
    return await load(url, duration);
  } finally {
    forget();
    server.kill("SIGTERM");
  }
}

const chain = await measureStack(startChain);
const allInOne = await measureStack(startAllInOne);
const reference =
  referenceUrl === undefined
    ? undefined
    : await measure(referenceUrl, referencePids, referencePids.map(commandOf));
const ceiling = await measureCeiling();
const ratio = chain.requestsPerSec / ceiling.requestsPerSec;
const row = (name: string, f: Figures) =>
  `${name.padEnd(9)} ${f.requestsPerSec.toFixed(0).padStart(8)} req/s  p50 ${f.p50} ms  p90 ${f.p90} ms  p99 ${f.p99} ms  non-2xx ${f.non2xx}  errors ${f.errors}`;
console.log(
  `\nchatmesh bench: ${client}${client === "wrk" ? ` (${wrkThreads} threads)` : ""}, ${connections} connections, ${duration} s, ${users} users, ${os.cpus().length} cores (${os.cpus()[0]?.model ?? "?"})`,
);
console.log(row("chain", chain));
console.log(row("all", allInOne));
if (reference !== undefined) console.log(row("reference", reference));
console.log(row("ceiling", ceiling));
const mb = (bytes: number) => (bytes / 1048576).toFixed(0);
console.log(
  `chain / ceiling = ${ratio.toFixed(3)}   peak memory of the 5 processes: RSS ${mb(chain.peakRssBytes)} MB, PSS ${mb(chain.peakPssBytes)} MB (shared pages counted once)`,
);
const each = (processes: readonly ProcessFigures[]) =>
  processes
    .map((p) => `${p.name} ${mb(p.peakRssBytes)} MB ${p.cpuUsPerRequest.toFixed(0)} µs`)
    .join(" · ");
const cpuPerChat = (processes: readonly ProcessFigures[]) =>
  processes.reduce((sum, p) => sum + p.cpuUsPerRequest, 0).toFixed(0);
console.log(
  `chain, each process (peak RSS, CPU per chat): ${each(chain.processes)}; CPU per chat in all: ${cpuPerChat(chain.processes)} µs`,
);
console.log(
  `all / ceiling = ${(allInOne.requestsPerSec / ceiling.requestsPerSec).toFixed(3)}   peak memory of \`chatmesh all\`: RSS ${mb(allInOne.peakRssBytes)} MB, PSS ${mb(allInOne.peakPssBytes)} MB`,
);
if (reference !== undefined) {
  const memory =
    referencePids.length === 0
      ? "(BENCH_REFERENCE_PIDS unset)"
      : `RSS ${mb(reference.peakRssBytes)} MB, PSS ${mb(reference.peakPssBytes)} MB`;
  console.log(
    `reference / ceiling = ${(reference.requestsPerSec / ceiling.requestsPerSec).toFixed(3)}   chain / reference = ${(chain.requestsPerSec / reference.requestsPerSec).toFixed(3)}   peak memory of the reference: ${memory}`,
  );
  if (referencePids.length > 0) {
    console.log(
      `reference, each process (peak RSS, CPU per chat): ${each(reference.processes)}; CPU per chat in all: ${cpuPerChat(reference.processes)} µs`,
    );
  }
}

const dir = fileURLToPath(new URL("./results/", import.meta.url));
mkdirSync(dir, { recursive: true });
const file = `${dir}chain-${new Date().toISOString().replace(/[:.]/g, "-")}.json`;
const failures = failedLoads({ chain, all: allInOne, reference, ceiling });
writeFileSync(
  file,
  `${JSON.stringify(
    {
      at: new Date().toISOString(),
      commit: commitOf(),
      node: process.version,
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      client,
      ...(client === "wrk" ? { wrkThreads } : {}),
      connections,
      duration,
      warmup,
      users,
      chain,
      allInOne,
      reference,
      ceiling,
      ratio,
      allRatio: allInOne.requestsPerSec / ceiling.requestsPerSec,
      ...(reference === undefined
        ? {}
        : {
            referenceRatio: reference.requestsPerSec / ceiling.requestsPerSec,
            chainToReference: chain.requestsPerSec / reference.requestsPerSec,
          }),
      failures,
    },
    null,
    2,
  )}\n`,
);
console.log(`figures written to ${file}`);
if (failures.length > 0) {
  console.error(
    `bench FAILED: requests/s count 2xx answers only, and these loads got others:\n  ${failures.join("\n  ")}`,
  );
  process.exitCode = 1;
}
