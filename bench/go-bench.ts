/**
 * `make bench-go`: `make bench` with the seed's Go original (Go + gRPC + Gin,
 * rebuilt from its README by bench/go-reference/build.sh) measured beside the
 * chain, under the same load in the same run: the parity the chain is held to,
 * on whatever machine this runs on. The Go chain is gateway → filter → token →
 * llm, as in the seed; it keeps no history and has no metrics or traces.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { connect } from "node:net";
import { fileURLToPath } from "node:url";
import { freePort, stopOnInterrupt, waitFor, waitHealthy } from "./stack.js";

const accepts = (port: number) =>
  new Promise<void>((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => {
      socket.destroy();
      resolve();
    });
    socket.once("error", reject);
  });

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));
try {
  execFileSync(here("./go-reference/build.sh"), { stdio: "inherit" });
} catch {
  // build.sh has said what is missing.
  process.exit(1);
}

const bin = (name: string) => here(`./go-reference/.build/bin/${name}`);
const [token, filter, llm, gateway] = (await Promise.all([1, 2, 3, 4].map(() => freePort()))) as [
  number,
  number,
  number,
  number,
];
const env = {
  ...process.env,
  TOKEN_ADDR: `127.0.0.1:${token}`,
  FILTER_ADDR: `127.0.0.1:${filter}`,
  LLM_ADDR: `127.0.0.1:${llm}`,
  GATEWAY_ADDR: `127.0.0.1:${gateway}`,
  QUOTA_LIMIT: String(Number.MAX_SAFE_INTEGER),
};
const start = (name: string): ChildProcess =>
  spawn(bin(name), { env, stdio: ["ignore", "ignore", "inherit"] });
// The gateway dials at start and fails calls while a service is down: the services go first.
const children: ChildProcess[] = [];
let bench: ChildProcess | undefined;
// Registered before the processes start: a signal before it would end this one alone.
const forget = stopOnInterrupt(async () => {
  // The chain's bench stops what it started, then the Go chain stops.
  if (bench !== undefined && bench.exitCode === null && bench.signalCode === null) {
    const exited = new Promise((resolve) => bench?.once("exit", resolve));
    bench.kill("SIGINT");
    await exited;
  }
  for (const child of children) child.kill("SIGTERM");
});
children.push(...["tokenserver", "filterserver", "llmserver"].map(start));
try {
  await Promise.all(
    [token, filter, llm].map((port) =>
      waitFor(`port ${port} not listening`, () => accepts(port), 10_000),
    ),
  );
  children.push(start("gateway"));
  await waitHealthy(gateway, 10_000, "/health");
  bench = spawn(process.execPath, ["--import", "tsx", here("./chain-bench.ts")], {
    env: {
      ...process.env,
      BENCH_REFERENCE_URL: `http://127.0.0.1:${gateway}`,
      BENCH_REFERENCE_PIDS: children.map((c) => c.pid).join(","),
    },
    stdio: "inherit",
  });
  const running = bench;
  process.exitCode = await new Promise<number>((resolve) =>
    running.once("exit", (code) => resolve(code ?? 1)),
  );
} finally {
  forget();
  for (const child of children) child.kill("SIGTERM");
}
