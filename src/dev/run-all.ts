import { type ChildProcess, spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import {
  defaultPorts,
  type Env,
  loadFilterConfig,
  loadGatewayConfig,
  loadHistoryConfig,
  loadLlmConfig,
  loadTokenConfig,
} from "../lib/config.js";
import { getStatus } from "../lib/healthcheck.js";
import { localUrlHost } from "../lib/local-host.js";
import { processEnvFor } from "../lib/node-options.js";
import { packageRoot } from "../lib/package-root.js";
import { listenProblem, parentPipeEnv } from "../lib/serve.js";
import { endOfHangup, hungUp, quietOnClosedOutput, terminalStreams } from "../lib/terminal.js";
import { formatLogLine } from "./pretty.js";

type Name = "token" | "filter" | "llm" | "history" | "gateway";

/** Start order: the services first, the gateway that calls them last. */
const names: readonly Name[] = ["token", "filter", "llm", "history", "gateway"];
const colors: Record<Name, string> = {
  token: "\x1b[33m",
  filter: "\x1b[36m",
  llm: "\x1b[35m",
  history: "\x1b[34m",
  gateway: "\x1b[32m",
};
const bin = join(packageRoot(), "bin", "chatmesh.js");

/** Why nothing can listen on host:port right now; undefined when something can. */
function listenError(host: string, port: number): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once("error", (err: NodeJS.ErrnoException) => resolve(err));
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve(undefined)));
  });
}

/** The one line run-all stops with when `name` could not listen on its port. */
function portProblem(name: Name, host: string, port: number, err: NodeJS.ErrnoException): string {
  const portEnv = defaultPorts[name].env;
  if (err.code === "EADDRINUSE") {
    return `port ${port} is already in use (set ${portEnv} to move ${name})`;
  }
  return (
    listenProblem(err, { host, port, portEnv }) ??
    `${name} cannot listen on ${host} port ${port}: ${err.message}`
  );
}

/**
 * Polls GET /healthz until it answers 200 (over https without checking the
 * certificate, as `chatmesh healthcheck` does: it is our own child); gives up
 * when `running()` turns false (the child is gone, or run-all is stopping) or
 * after 30 s.
 */
async function waitHealthy(baseUrl: string, port: number, running: () => boolean): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && running()) {
    try {
      if ((await getStatus(`${baseUrl}/healthz`, 2_000)) === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`did not become healthy on port ${port}`);
}

/** Whether the first certificate of a PEM file signed itself; false when it cannot be read (the processes say why). */
function isSelfSigned(certFile: string): boolean {
  try {
    const cert = new X509Certificate(readFileSync(certFile));
    return cert.checkIssued(cert) && cert.verify(cert.publicKey);
  } catch {
    return false;
  }
}

function prefixOutput(name: Name, child: ChildProcess, color: boolean): void {
  const label = `${name.padEnd(7)} |`;
  const prefix = color ? `${colors[name]}${label}\x1b[0m ` : `${label} `;
  for (const stream of [child.stdout, child.stderr]) {
    if (stream === null) continue;
    createInterface({ input: stream }).on("line", (line) => {
      process.stdout.write(`${prefix}${formatLogLine(line)}\n`);
    });
  }
}

/**
 * `make run-all`: starts token, filter, llm, history and gateway with embedded
 * defaults, prefixes their output with their names, prints the URLs once all
 * are healthy, and stops them all on Ctrl-C or when one dies. Returns the
 * exit code.
 */
export async function runAll(env: Env = process.env): Promise<number> {
  // Every process's variables are validated before anything starts.
  const gateway = loadGatewayConfig(env);
  const ports: Record<Name, number> = {
    token: loadTokenConfig(env).port,
    filter: loadFilterConfig(env).port,
    llm: loadLlmConfig(env).port,
    history: loadHistoryConfig(env).port,
    gateway: gateway.port,
  };
  const portOf = (name: Name) => ports[name];
  for (const name of names) {
    if (portOf(name) === 0) {
      const portEnv = defaultPorts[name].env;
      console.error(
        `run-all: ${portEnv}=0 (any free port) does not work with run-all, which wires the processes together by their ports (set ${portEnv} to a port from 1 to 65535)`,
      );
      return 1;
    }
  }
  for (const [i, name] of names.entries()) {
    const other = names.slice(0, i).find((earlier) => portOf(earlier) === portOf(name));
    if (other !== undefined) {
      console.error(
        `run-all: ${defaultPorts[other].env} and ${defaultPorts[name].env} are both ${portOf(name)} (each process needs a port of its own)`,
      );
      return 1;
    }
  }
  for (const name of names) {
    const err = await listenError(gateway.host, portOf(name));
    if (err !== undefined) {
      console.error(`run-all: ${portProblem(name, gateway.host, portOf(name), err)}`);
      return 1;
    }
  }
  // Where this machine reaches the processes: the printed URLs, the health
  // checks, and the services' URLs the gateway gets. With TLS files every
  // process serves TLS; a self-signed certificate (for local use) is the CA
  // the gateway trusts unless UPSTREAM_CA_FILE says otherwise.
  const base = `${gateway.tls === undefined ? "http" : "https"}://${localUrlHost(gateway.host)}`;
  const childEnv: Record<string, string | undefined> = { ...env };
  // A blank value is unset, as the processes' config reads it: left blank,
  // the gateway would call a service on its default port, not run-all's.
  const setUnlessGiven = (name: string, value: string) => {
    if ((childEnv[name] ?? "").trim() === "") childEnv[name] = value;
  };
  if (gateway.tls !== undefined && isSelfSigned(gateway.tls.certFile)) {
    setUnlessGiven("UPSTREAM_CA_FILE", gateway.tls.certFile);
  }
  for (const name of ["token", "filter", "llm", "history"] as const) {
    setUnlessGiven(`${name.toUpperCase()}_URL`, `${base}:${portOf(name)}`);
  }
  // A short pause between streamed words, so the chat page visibly streams.
  setUnlessGiven("ECHO_CHUNK_DELAY_MS", "40");

  const color = process.stdout.isTTY === true;
  // Once its terminal is closed, every write to it fails with EIO: the
  // output goes nowhere, and run-all still stops its processes in order. The
  // error, unhandled, ended run-all at the gateway's first line after the
  // hang-up, and its processes all stopped at once as their pipe from it
  // ended, the history and token services before the gateway's drain. A
  // reader gone (EPIPE: `run-all | head`) is the same.
  const terminal = terminalStreams();
  quietOnClosedOutput();
  const children = new Map<Name, ChildProcess>();
  let stopping = false;
  let exitCode = 0;
  const alive = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;
  // The gateway first, the services once it is gone: draining, it still
  // sends the history the chats it answered and the token service the
  // refunds it owes, which were lost when all five stopped at once.
  const stopAll = (code: number) => {
    if (stopping) return;
    stopping = true;
    exitCode = code;
    const stopServices = () => {
      for (const [name, child] of children) {
        if (name !== "gateway" && alive(child)) child.kill("SIGTERM");
      }
    };
    const gatewayChild = children.get("gateway");
    if (gatewayChild === undefined || !alive(gatewayChild)) return stopServices();
    gatewayChild.once("exit", stopServices);
    gatewayChild.kill("SIGTERM");
  };
  // A second Ctrl-C (or SIGTERM) does not wait for the gateway: every
  // process still running is killed at once. In groups of their own, they get
  // none of the terminal's signals: had this process died of that second
  // signal (Node's default once a listener is used up), they would have
  // served on unseen, all stopping at once as their pipe from it ended, and
  // a gateway hung on shutdown for good.
  let signals = 0;
  const onSignal = () => {
    signals += 1;
    if (signals === 1) return stopAll(0);
    for (const child of children.values()) if (alive(child)) child.kill("SIGKILL");
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  // The terminal closed: its processes go with it (the filter alone would
  // take SIGHUP for a reload of its terms and keep serving).
  process.on("SIGHUP", () => stopAll(0));

  const exited: Promise<void>[] = [];
  for (const name of names) {
    const child = spawn(process.execPath, [bin, name], {
      env: { ...processEnvFor(name, childEnv), [parentPipeEnv]: "1" },
      // Their stdin: a pipe that ends when this process does, even killed.
      stdio: ["pipe", "pipe", "pipe"],
      // A group of their own: the terminal's Ctrl-C and hang-up reach this
      // process alone, which stops them in order (the gateway first).
      detached: true,
    });
    children.set(name, child);
    prefixOutput(name, child, color);
    exited.push(
      new Promise((resolve) =>
        child.once("exit", (code, signal) => {
          if (!stopping) {
            console.error(`run-all: ${name} exited (${signal ?? code}); stopping the others`);
            stopAll(1);
          }
          resolve();
        }),
      ),
    );
  }

  try {
    for (const name of names) {
      const child = children.get(name) as ChildProcess;
      // A child killed by a signal has no exit code, only a signal code.
      const running = () => !stopping && alive(child);
      await waitHealthy(`${base}:${portOf(name)}`, portOf(name), running);
    }
    if (!stopping) {
      console.log(
        [
          "",
          "chatmesh is up:",
          `  gateway  ${base}:${portOf("gateway")}   (POST /chat, POST /chat/stream, GET /history, GET /health)`,
          `  chat     ${base}:${portOf("gateway")}/  (the chat page, in a browser)`,
          `  openai   ${base}:${portOf("gateway")}/v1  (OpenAI-compatible: baseURL of the OpenAI SDKs)`,
          `  token    ${base}:${portOf("token")}  (chat.v1.TokenService)`,
          `  filter   ${base}:${portOf("filter")}  (chat.v1.FilterService)`,
          `  llm      ${base}:${portOf("llm")}  (chat.v1.LLMService)`,
          `  history  ${base}:${portOf("history")}  (chat.v1.HistoryService)`,
          "Press Ctrl-C to stop.",
          "",
        ].join("\n"),
      );
    }
  } catch (err) {
    if (!stopping) {
      console.error(`run-all: ${(err as Error).message}; stopping`);
      stopAll(1);
    }
  }
  await Promise.all(exited);
  // Node's exit aborts when it cannot reset a terminal that hung up: run-all
  // ends of the hang-up instead, as its processes do (see closeOnSignals).
  if (hungUp(terminal)) endOfHangup();
  return exitCode;
}
