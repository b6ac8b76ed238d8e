/**
 * `make soak`: the five processes (loopback, free ports) under a steady,
 * bounded, mixed load for SOAK_SECONDS (600), sampling each process's RSS
 * (/proc) and event-loop delay (`nodejs_eventloop_lag_seconds` and its p99
 * from its own /metrics) every SOAK_SAMPLE_S (10). Prints a table over time
 * and, per process, whether memory plateaued: the mean RSS of the last third
 * of the run against the middle third (the first third is warm-up). Exits 1
 * when a process grew more than SOAK_MAX_GROWTH (0.10, so 10 %), when one
 * exited, or when the load got a 5xx or a connection error.
 *
 * Options (env): SOAK_SECONDS (600), SOAK_RATE (200 requests/s in all),
 * SOAK_CONNECTIONS (20), SOAK_USERS (2000), SOAK_SAMPLE_S (10),
 * SOAK_MAX_GROWTH (0.10).
 */
import type { ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os, { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { freePort, rssOf, startProcess, waitHealthy } from "./stack.js";

const seconds = Number(process.env.SOAK_SECONDS ?? 600);
const rate = Number(process.env.SOAK_RATE ?? 200);
const connections = Number(process.env.SOAK_CONNECTIONS ?? 20);
const users = Number(process.env.SOAK_USERS ?? 2_000);
const sampleSeconds = Number(process.env.SOAK_SAMPLE_S ?? 10);
const maxGrowth = Number(process.env.SOAK_MAX_GROWTH ?? 0.1);

const names = ["gateway", "token", "filter", "llm", "history"] as const;
type Name = (typeof names)[number];

interface Sample {
  readonly at: number;
  readonly rssMb: Record<Name, number>;
  readonly lagMs: Record<Name, number>;
  readonly lagP99Ms: Record<Name, number>;
}

/** One gauge of a Prometheus text exposition, in seconds. */
function gauge(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? Number.NaN : Number(line.split(" ")[1]);
}

async function startStack() {
  const ports = Object.fromEntries(
    await Promise.all(names.map(async (n) => [n, await freePort()])),
  ) as Record<Name, number>;
  const dataDir = mkdtempSync(join(tmpdir(), "chatmesh-soak-"));
  const env: Record<string, string> = {
    ...Object.fromEntries(names.map((n) => [`${n.toUpperCase()}_PORT`, String(ports[n])])),
    ...Object.fromEntries(
      names
        .filter((n) => n !== "gateway")
        .map((n) => [`${n.toUpperCase()}_URL`, `http://127.0.0.1:${ports[n]}`]),
    ),
    HISTORY_DATABASE_URL: `sqlite:${join(dataDir, "history.db")}`,
    QUOTA_LIMIT: String(Number.MAX_SAFE_INTEGER),
  };
  const children = Object.fromEntries(names.map((n) => [n, startProcess(n, env)])) as Record<
    Name,
    ChildProcess
  >;
  await Promise.all(names.map((n) => waitHealthy(ports[n])));
  return {
    ports,
    children,
    async stop() {
      await Promise.all(
        Object.values(children).map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.exitCode !== null) return resolve();
              c.once("exit", () => resolve());
              c.kill("SIGTERM");
            }),
        ),
      );
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** One request of the mix: mostly chats, some refusals, some reads. */
function mixedRequest(): {
  method: "GET" | "POST";
  path: string;
  headers: Record<string, string>;
  body?: string;
} {
  const user = `soak-${Math.floor(Math.random() * users)}`;
  const json = { "content-type": "application/json" };
  const roll = Math.random();
  if (roll < 0.7) {
    const text = `Hello   soak   ${Math.random().toString(36).slice(2)}`;
    return {
      method: "POST",
      path: "/chat",
      headers: json,
      body: JSON.stringify({ user_id: user, text }),
    };
  }
  if (roll < 0.78) {
    return {
      method: "POST",
      path: "/chat",
      headers: json,
      body: JSON.stringify({ user_id: user, text: "this has foo inside" }),
    };
  }
  if (roll < 0.83) return { method: "POST", path: "/chat", headers: json, body: "{not json" };
  if (roll < 0.86)
    return { method: "POST", path: "/chat", headers: { "content-type": "text/plain" }, body: "hi" };
  if (roll < 0.94)
    return { method: "GET", path: `/history?user_id=${user}&page_size=20`, headers: {} };
  return { method: "GET", path: `/quota?user_id=${user}`, headers: {} };
}

const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / Math.max(1, values.length);

const stack = await startStack();
const samples: Sample[] = [];
const started = Date.now();
let exited: string[] = [];
for (const name of names) {
  stack.children[name].once("exit", (code, signal) => {
    exited = [...exited, `${name} (${code ?? signal})`];
  });
}
async function sample() {
  const rssMb = {} as Record<Name, number>;
  const lagMs = {} as Record<Name, number>;
  const lagP99Ms = {} as Record<Name, number>;
  await Promise.all(
    names.map(async (n) => {
      rssMb[n] = rssOf(stack.children[n].pid) / 1_048_576;
      try {
        const text = await (await fetch(`http://127.0.0.1:${stack.ports[n]}/metrics`)).text();
        lagMs[n] = gauge(text, "nodejs_eventloop_lag_seconds") * 1000;
        lagP99Ms[n] = gauge(text, "nodejs_eventloop_lag_p99_seconds") * 1000;
      } catch {
        lagMs[n] = Number.NaN;
        lagP99Ms[n] = Number.NaN;
      }
    }),
  );
  samples.push({ at: (Date.now() - started) / 1000, rssMb, lagMs, lagP99Ms });
}

console.log(
  `chatmesh soak: ${seconds} s, ${rate} req/s over ${connections} connections, ${users} users, ` +
    `${os.cpus().length} cores; sampling every ${sampleSeconds} s`,
);
await sample();
const sampler = setInterval(() => void sample(), sampleSeconds * 1000);
const result = await autocannon({
  url: `http://127.0.0.1:${stack.ports.gateway}`,
  connections,
  overallRate: rate,
  duration: seconds,
  requests: [{ setupRequest: (req) => ({ ...req, ...mixedRequest() }) }],
});
clearInterval(sampler);
await sample();

const cell = (v: number, width: number) => (Number.isNaN(v) ? "?" : v.toFixed(1)).padStart(width);
console.log(
  `\n${"t (s)".padStart(6)}  ${names.map((n) => `${n} MB / lag ms / p99`.padStart(26)).join("")}`,
);
for (const s of samples) {
  console.log(
    `${s.at.toFixed(0).padStart(6)}  ${names.map((n) => `${cell(s.rssMb[n], 8)} /${cell(s.lagMs[n], 6)} /${cell(s.lagP99Ms[n], 6)}`.padStart(26)).join("")}`,
  );
}

const third = Math.floor(samples.length / 3);
const middle = samples.slice(third, 2 * third);
const last = samples.slice(2 * third);
const verdicts = names.map((n) => {
  const mid = mean(middle.map((s) => s.rssMb[n]));
  const end = mean(last.map((s) => s.rssMb[n]));
  const growth = end / mid - 1;
  return {
    process: n,
    middleThirdMb: Number(mid.toFixed(1)),
    lastThirdMb: Number(end.toFixed(1)),
    growth: Number(growth.toFixed(4)),
    maxLagP99Ms: Number(
      Math.max(...samples.map((s) => s.lagP99Ms[n]).filter((v) => !Number.isNaN(v))).toFixed(1),
    ),
    plateaued: growth <= maxGrowth,
  };
});
console.log("\nmemory: mean RSS of the last third against the middle third");
for (const v of verdicts) {
  console.log(
    `  ${v.process.padEnd(8)} ${String(v.middleThirdMb).padStart(7)} MB → ${String(v.lastThirdMb).padStart(7)} MB  ` +
      `(${(v.growth * 100).toFixed(1)} %)  max event-loop p99 ${v.maxLagP99Ms} ms  ${v.plateaued ? "plateaued" : "STILL GROWING"}`,
  );
}
const statuses = Object.fromEntries(
  Object.entries(result.statusCodeStats ?? {}).map(([code, stat]) => [
    code,
    (stat as { count: number }).count,
  ]),
);
const serverErrors = Object.entries(statuses)
  .filter(([code]) => code.startsWith("5"))
  .reduce((sum, [, count]) => sum + count, 0);
console.log(
  `\nrequests: ${result.requests.total} (${result.requests.average.toFixed(0)}/s), latency p50 ${result.latency.p50} ms p99 ${result.latency.p99} ms, ` +
    `statuses ${JSON.stringify(statuses)}, connection errors ${result.errors}, timeouts ${result.timeouts}`,
);
if (exited.length > 0) console.log(`processes that exited: ${exited.join(", ")}`);

const dir = fileURLToPath(new URL("./results/", import.meta.url));
mkdirSync(dir, { recursive: true });
const file = `${dir}soak-${new Date().toISOString().replace(/[:.]/g, "-")}.json`;
writeFileSync(
  file,
  `${JSON.stringify({ at: new Date().toISOString(), seconds, rate, connections, users, samples, verdicts, statuses, errors: result.errors, timeouts: result.timeouts, exited }, null, 2)}\n`,
);
console.log(`figures written to ${file}`);
await stack.stop();

const ok =
  verdicts.every((v) => v.plateaued) &&
  exited.length === 0 &&
  serverErrors === 0 &&
  result.errors === 0 &&
  result.timeouts === 0;
console.log(ok ? "soak passed" : "soak FAILED");
process.exitCode = ok ? 0 : 1;
