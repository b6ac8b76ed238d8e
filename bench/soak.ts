/**
 * `make soak`: the five processes (loopback, free ports) under a steady,
 * bounded, mixed load for SOAK_SECONDS (600), sampling each process's RSS
 * (/proc), heap used and event-loop delay (`nodejs_eventloop_lag_seconds` and its p99
 * from its own /metrics) every SOAK_SAMPLE_S (10). Prints a table over time
 * and, per process, whether memory plateaued (judgeMemory: the last third of
 * the run against the ones before; the first third is warm-up). Exits 1 when
 * a process grew more than SOAK_MAX_GROWTH (0.10, so 10 %), when one exited,
 * or when the load got a 5xx, another status than a request of its kind gets
 * (a 429 or 404, a blocked chat answered 200), or a request without an answer.
 *
 * The load is a loop of SOAK_CONNECTIONS workers, each sending one request
 * of the mix every SOAK_CONNECTIONS / SOAK_RATE seconds (evenly spaced, so
 * the figures are not those of bursts); beside it, one timed chat per sample.
 *
 * Options (env): SOAK_SECONDS (600), SOAK_RATE (100 requests/s in all),
 * SOAK_CONNECTIONS (20), SOAK_USERS (2000), SOAK_SAMPLE_S (10),
 * SOAK_MAX_GROWTH (0.10).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { fileURLToPath } from "node:url";
import { optionsOrExit, soakOptions } from "./options.js";
import { runSteadyLoad } from "./soak-load.js";
import { formatVerdicts, judgeMemory, type Sample } from "./soak-verdict.js";
import { rssOf, startChain, stopOnInterrupt } from "./stack.js";

const { seconds, rate, connections, users, sampleSeconds, maxGrowth } = optionsOrExit(
  "make soak",
  () => soakOptions(process.env),
);

const names = ["gateway", "token", "filter", "llm", "history"] as const;
type Name = (typeof names)[number];

/** One gauge of a Prometheus text exposition, in seconds. */
function gauge(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? Number.NaN : Number(line.split(" ")[1]);
}

let stopping = false;
// Interrupted, the processes' exits are the stop's, not failures to report.
stopOnInterrupt(() => {
  stopping = true;
});
const stack = await startChain();
const samples: Sample[] = [];
const started = Date.now();
let exited: string[] = [];
for (const name of names) {
  stack.children[name].once("exit", (code, signal) => {
    if (stopping) return;
    const at = ((Date.now() - started) / 1000).toFixed(0);
    exited = [...exited, `${name} (${code ?? signal} at ${at} s)`];
    console.error(`soak: ${name} exited (${code ?? signal}) at ${at} s`);
  });
}
async function sample() {
  const rssMb = {} as Record<Name, number>;
  const lagMs = {} as Record<Name, number>;
  const lagP99Ms = {} as Record<Name, number>;
  const heapMb = {} as Record<Name, number>;
  await Promise.all(
    names.map(async (n) => {
      rssMb[n] = rssOf(stack.children[n].pid) / 1_048_576;
      try {
        const text = await (await fetch(`http://127.0.0.1:${stack.ports[n]}/metrics`)).text();
        lagMs[n] = gauge(text, "nodejs_eventloop_lag_seconds") * 1000;
        lagP99Ms[n] = gauge(text, "nodejs_eventloop_lag_p99_seconds") * 1000;
        heapMb[n] = gauge(text, "nodejs_heap_size_used_bytes") / 1_048_576;
      } catch {
        lagMs[n] = Number.NaN;
        lagP99Ms[n] = Number.NaN;
        heapMb[n] = Number.NaN;
      }
    }),
  );
  const probeStarted = performance.now();
  let probeMs = Number.NaN;
  try {
    const probe = await fetch(`http://127.0.0.1:${stack.ports.gateway}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "soak-probe", text: "probe" }),
    });
    await probe.arrayBuffer();
    if (probe.ok) probeMs = performance.now() - probeStarted;
  } catch {
    // Shown as "?": the table and the exit report say why.
  }
  samples.push({ at: (Date.now() - started) / 1000, probeMs, rssMb, lagMs, lagP99Ms, heapMb });
}

console.log(
  `chatmesh soak: ${seconds} s, ${rate} req/s over ${connections} connections, ${users} users, ` +
    `${os.cpus().length} cores; sampling every ${sampleSeconds} s`,
);
await sample();
const sampler = setInterval(() => void sample(), sampleSeconds * 1000);
const result = await runSteadyLoad({
  url: `http://127.0.0.1:${stack.ports.gateway}`,
  rate,
  workers: connections,
  seconds,
  users,
});
clearInterval(sampler);
await sample();

const cell = (v: number, width: number) => (Number.isNaN(v) ? "?" : v.toFixed(1)).padStart(width);
console.log(
  `\nper process: RSS MB / heap used MB / event-loop lag ms (nodejs_eventloop_lag_seconds) / its p99 ms`,
);
console.log(
  `${"t (s)".padStart(6)} ${"chat ms".padStart(8)} ${names.map((n) => n.padStart(28)).join("")}`,
);
for (const s of samples) {
  const columns = names.map((n) =>
    `${cell(s.rssMb[n], 7)}/${cell(s.heapMb[n], 6)}/${cell(s.lagMs[n], 6)}/${cell(s.lagP99Ms[n], 6)}`.padStart(
      28,
    ),
  );
  console.log(`${s.at.toFixed(0).padStart(6)} ${cell(s.probeMs, 8)} ${columns.join("")}`);
}

const verdicts = judgeMemory(samples, names, maxGrowth);
console.log(
  "\nmemory: mean RSS of the last third against the middle third, and the last third's peak against the peak before it",
);
for (const line of formatVerdicts(verdicts)) console.log(line);
const serverErrors = Object.entries(result.statuses)
  .filter(([code]) => code.startsWith("5"))
  .reduce((sum, [, count]) => sum + count, 0);
const failedRequests = Object.values(result.errors).reduce((a, b) => a + b, 0);
console.log(
  `\nrequests: ${result.total} (${(result.total / seconds).toFixed(0)}/s), latency p50 ${result.p50Ms.toFixed(1)} ms p99 ${result.p99Ms.toFixed(1)} ms, ` +
    `statuses ${JSON.stringify(result.statuses)}, without an answer ${JSON.stringify(result.errors)}`,
);
const unexpectedAnswers = Object.values(result.unexpected).reduce((a, b) => a + b, 0);
if (unexpectedAnswers > 0) {
  console.log(`answers with another status than the mix's: ${JSON.stringify(result.unexpected)}`);
}
// Judged before the stop, whose own exits are expected.
const exitedDuringRun = [...exited];
if (exitedDuringRun.length > 0) console.log(`processes that exited: ${exitedDuringRun.join(", ")}`);

const dir = fileURLToPath(new URL("./results/", import.meta.url));
mkdirSync(dir, { recursive: true });
const file = `${dir}soak-${new Date().toISOString().replace(/[:.]/g, "-")}.json`;
writeFileSync(
  file,
  `${JSON.stringify({ at: new Date().toISOString(), seconds, rate, connections, users, cpus: os.cpus().length, samples, verdicts, result, exited: exitedDuringRun }, null, 2)}\n`,
);
console.log(`figures written to ${file}`);
stopping = true;
await stack.stop();

const ok =
  verdicts.every((v) => v.plateaued) &&
  exitedDuringRun.length === 0 &&
  serverErrors === 0 &&
  unexpectedAnswers === 0 &&
  failedRequests === 0;
console.log(ok ? "soak passed" : "soak FAILED");
process.exitCode = ok ? 0 : 1;
