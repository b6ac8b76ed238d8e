import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { describe, expect, it, onTestFinished, vi } from "vitest";
import {
  chatmeshBin,
  endsWithWorker,
  freePort,
  type Running,
  startChatmesh,
  waitForOutput,
  watchChild,
} from "../fixtures/processes.js";
import { running, script, startInTerminal } from "../fixtures/terminal.js";
import { curl, opensslOrSkip } from "../fixtures/tls.js";

const holdStart = fileURLToPath(new URL("../fixtures/hold-start.cjs", import.meta.url));

type PortVar = "TOKEN_PORT" | "FILTER_PORT" | "LLM_PORT" | "HISTORY_PORT" | "GATEWAY_PORT";

/** The five ports moved to free ones, and history's file in a temporary directory. */
async function runAllEnv(): Promise<Record<PortVar | "HISTORY_DATABASE_URL", string>> {
  const dataDir = await mkdtemp(join(tmpdir(), "chatmesh-run-all-"));
  onTestFinished(() => rm(dataDir, { recursive: true, force: true }));
  return {
    TOKEN_PORT: String(await freePort()),
    FILTER_PORT: String(await freePort()),
    LLM_PORT: String(await freePort()),
    HISTORY_PORT: String(await freePort()),
    GATEWAY_PORT: String(await freePort()),
    HISTORY_DATABASE_URL: `sqlite:${join(dataDir, "history.db")}`,
  };
}

/** The pids of a process's direct children (Linux /proc). */
function childPids(pid: number): number[] {
  const file = `/proc/${pid}/task/${pid}/children`;
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("run-all refuses to start with one line", () => {
  it.each([
    [
      "no.such.host.invalid",
      "cannot be resolved to an address (set HOST to an address or a known name)",
    ],
    ["192.0.2.1", "is not an address of this machine (set HOST to one, or 0.0.0.0 for all)"],
  ])("naming HOST when HOST=%s cannot be bound", async (host, problem) => {
    const run = startChatmesh(["run-all"], { ...(await runAllEnv()), HOST: host });
    expect(await run.exited).toBe(1);
    expect(run.output()).toBe(`run-all: HOST ${host} ${problem}\n`);
  });

  it("naming both variables when two processes are given one port", async () => {
    const env = await runAllEnv();
    const run = startChatmesh(["run-all"], { ...env, FILTER_PORT: env.TOKEN_PORT });
    expect(await run.exited).toBe(1);
    expect(run.output()).toBe(
      `run-all: TOKEN_PORT and FILTER_PORT are both ${env.TOKEN_PORT} (each process needs a port of its own)\n`,
    );
  });

  it("naming the variable when a port is 0, which it cannot wire or print", async () => {
    const run = startChatmesh(["run-all"], { ...(await runAllEnv()), GATEWAY_PORT: "0" });
    expect(await run.exited).toBe(1);
    expect(run.output()).toBe(
      "run-all: GATEWAY_PORT=0 (any free port) does not work with run-all, which wires the processes together by their ports (set GATEWAY_PORT to a port from 1 to 65535)\n",
    );
  }, 60_000);
});

describe("run-all on an IPv6 HOST", () => {
  it.each(["frames", "connect"])(
    "serves chats and streams on [::1] (UPSTREAM_PROTOCOL=%s)",
    async (protocol) => {
      const env = { ...(await runAllEnv()), HOST: "::1", UPSTREAM_PROTOCOL: protocol };
      const run = startChatmesh(["run-all"], env);
      onTestFinished(async () => {
        await run.stop("SIGINT");
      });
      await waitForOutput(run, /chatmesh is up/, 60_000);
      const gateway = `http://[::1]:${env.GATEWAY_PORT}`;
      expect(run.output()).toContain(`gateway  ${gateway}`);
      expect(run.output()).toContain(`token    http://[::1]:${env.TOKEN_PORT}`);
      const chat = (path: string, user: string) =>
        fetch(`${gateway}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ user_id: user, text: "hello over IPv6" }),
        });
      const res = await chat("/chat", "u1");
      expect(await res.json()).toEqual({
        cleaned: "hello over IPv6",
        reply: "Echo: hello over IPv6",
        remaining: 150,
      });
      const stream = await (await chat("/chat/stream", "u2")).text();
      expect(stream).toContain(
        'event: done\ndata: {"reply":"Echo: hello over IPv6","remaining":150}',
      );
      run.child.kill("SIGINT");
      expect(await run.exited).toBe(0);
    },
    120_000,
  );
});

describe("run-all with a service URL variable set blank", () => {
  it("wires the gateway to its own services, as with the variable unset", async () => {
    const env = {
      ...(await runAllEnv()),
      TOKEN_URL: "",
      FILTER_URL: " ",
      LLM_URL: "",
      HISTORY_URL: "",
    };
    const run = startChatmesh(["run-all"], env);
    onTestFinished(async () => {
      await run.stop("SIGINT");
    });
    await waitForOutput(run, /chatmesh is up/, 60_000);
    expect(run.output()).toContain(`token=http://127.0.0.1:${env.TOKEN_PORT}`);
    const res = await fetch(`http://127.0.0.1:${env.GATEWAY_PORT}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "u1", text: "wired" }),
    });
    expect([res.status, await res.json()]).toEqual([
      200,
      { cleaned: "wired", reply: "Echo: wired", remaining: 150 },
    ]);
  }, 120_000);
});

describe.skipIf(!opensslOrSkip())("run-all with TLS files", () => {
  it("serves every process over TLS, the gateway trusting the self-signed certificate", async () => {
    const dir = await mkdtemp(join(tmpdir(), "chatmesh-run-all-tls-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    // The README's command for a local certificate.
    execFileSync("openssl", [
      ..."req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2".split(" "),
      ...["-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"), "-subj", "/CN=localhost"],
      ...["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
    ]);
    const env = {
      ...(await runAllEnv()),
      TLS_CERT_FILE: join(dir, "cert.pem"),
      TLS_KEY_FILE: join(dir, "key.pem"),
    };
    const run = startChatmesh(["run-all"], env);
    onTestFinished(async () => {
      await run.stop("SIGINT");
    });
    await waitForOutput(run, /chatmesh is up/, 60_000);
    const gateway = `https://127.0.0.1:${env.GATEWAY_PORT}`;
    expect(run.output()).toContain(`gateway  ${gateway}`);
    expect(run.output()).toContain(`history  https://127.0.0.1:${env.HISTORY_PORT}`);
    const chat = await curl([
      ...["--cacert", env.TLS_CERT_FILE, "-H", "content-type: application/json"],
      ...["-d", '{"user_id":"tls","text":"Hello   over TLS"}', `${gateway}/chat`],
    ]);
    expect(chat).toMatchObject({ code: 0 });
    expect(JSON.parse(chat.out)).toEqual({
      cleaned: "Hello over TLS",
      reply: "Echo: Hello over TLS",
      remaining: 150,
    });
    const plain = await curl([`http://127.0.0.1:${env.FILTER_PORT}/healthz`]);
    expect(plain.out).not.toBe("ok");
    run.child.kill("SIGINT");
    expect(await run.exited).toBe(0);
  }, 120_000);
});

describe("run-all killed", () => {
  it("takes its processes with it, though it could not stop them (kill -9)", async () => {
    const run = startChatmesh(["run-all"], await runAllEnv());
    let children: number[] = [];
    onTestFinished(() => {
      for (const pid of children.filter(alive)) process.kill(pid, "SIGKILL");
    });
    await waitForOutput(run, /chatmesh is up/);
    children = childPids(run.child.pid as number);
    expect(children).toHaveLength(5);
    run.child.kill("SIGKILL");
    await vi.waitFor(() => expect(children.filter(alive)).toEqual([]), {
      timeout: 15_000,
      interval: 100,
    });
  }, 60_000);
});

/**
 * run-all in a process group of its own, as a terminal's foreground job is:
 * a terminal's Ctrl-C goes to the whole group (`process.kill(group, …)`).
 */
function startRunAllInGroup(env: Record<string, string>): { run: Running; group: number } {
  const child = endsWithWorker(
    spawn(process.execPath, [chatmeshBin, "run-all"], {
      env: { ...process.env, LOG_LEVEL: "info", CHATMESH_FROM_SOURCE: "1", ...env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    }),
  );
  const { output, exited } = watchChild(child);
  const group = -(child.pid as number);
  const run: Running = {
    child,
    name: "run-all",
    output,
    exited,
    logsListening: true,
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) process.kill(group, signal);
      return exited;
    },
  };
  onTestFinished(async () => {
    await run.stop("SIGKILL");
  });
  return { run, group };
}

describe("run-all stopped by its terminal's Ctrl-C", () => {
  it("stops the gateway first: a stream in flight ends, and its chat still reaches the history", async () => {
    const env = { ...(await runAllEnv()), ECHO_CHUNK_DELAY_MS: "200" };
    const { run, group } = startRunAllInGroup(env);
    await waitForOutput(run, /chatmesh is up/, 60_000);
    const res = await fetch(`http://127.0.0.1:${env.GATEWAY_PORT}/chat/stream`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "u1", text: "one two three four five six seven eight" }),
    });
    const body = res.text();
    await waitForOutput(run, /route=\/chat\.v1\.TokenService\/CheckAndInc/, 15_000);
    process.kill(group, "SIGINT");
    expect(await body).toContain("event: done");
    expect(await run.exited).toBe(0);
    expect(run.output()).toMatch(/history +\| .*history entry appended/);
    expect(run.output()).not.toContain("history entry lost");
  }, 90_000);
});

describe("run-all stopped by Ctrl-C twice", () => {
  it("kills its processes at the second, and ends only once they are gone", async () => {
    const env = { ...(await runAllEnv()), ECHO_CHUNK_DELAY_MS: "200" };
    const { run, group } = startRunAllInGroup(env);
    await waitForOutput(run, /chatmesh is up/, 60_000);
    const processes = childPids(run.child.pid as number);
    // A stream in flight holds the gateway's drain (and the LLM's) open.
    const res = await fetch(`http://127.0.0.1:${env.GATEWAY_PORT}/chat/stream`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "u1", text: "one two three four five six seven eight" }),
    });
    const body = res.text().catch(() => "");
    await waitForOutput(run, /route=\/chat\.v1\.TokenService\/CheckAndInc/, 15_000);
    process.kill(group, "SIGINT");
    await waitForOutput(run, /gateway +\| .*shutting down/, 15_000);
    process.kill(group, "SIGINT");
    await run.exited;
    await body;
    expect(processes.filter(alive), run.output()).toEqual([]);
  }, 90_000);
});

describe.skipIf(script === undefined)("run-all whose terminal is closed", () => {
  it("stops the gateway first though its output goes nowhere: a chat in flight still reaches the history", async () => {
    const env = { ...(await runAllEnv()), ECHO_CHUNK_DELAY_MS: "200" };
    const { terminal, output } = startInTerminal(
      `echo "pid=$$"; exec "${process.execPath}" "${chatmeshBin}" run-all`,
      env,
    );
    let processes: number[] = [];
    onTestFinished(() => {
      terminal.kill("SIGKILL");
      for (const pid of processes.filter(running)) process.kill(pid, "SIGKILL");
    });
    await expect.poll(() => /chatmesh is up/.test(output()), { timeout: 60_000 }).toBe(true);
    const pid = Number(/pid=(\d+)/.exec(output())?.[1]);
    processes = [pid, ...childPids(pid)];
    expect(processes).toHaveLength(6);
    const res = await fetch(`http://127.0.0.1:${env.GATEWAY_PORT}/chat/stream`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "u1", text: "one two three four five six seven eight" }),
    });
    const body = res.text().catch(() => "");
    await expect
      .poll(() => /route=\/chat\.v1\.TokenService\/CheckAndInc/.test(output()), { timeout: 15_000 })
      .toBe(true);
    // Killed, `script` closes the terminal: run-all gets its SIGHUP, and
    // every line it writes to it from then on fails with EIO.
    terminal.kill("SIGKILL");
    await body;
    await vi.waitFor(() => expect(processes.filter(running)).toEqual([]), {
      timeout: 20_000,
      interval: 100,
    });
    const db = new Database(env.HISTORY_DATABASE_URL.slice("sqlite:".length), { readonly: true });
    try {
      expect(db.prepare("SELECT text FROM history_entries").all()).toEqual([
        { text: "one two three four five six seven eight" },
      ]);
    } finally {
      db.close();
    }
  }, 90_000);
});

describe("run-all stopped during start-up", () => {
  // SIGHUP: the terminal it runs in was closed.
  it.each(["SIGINT", "SIGHUP"] as const)(
    "stops every process at once on %s",
    async (signal) => {
      const run = startChatmesh(["run-all"], {
        ...(await runAllEnv()),
        // Its processes are held before they can handle a signal of their own.
        NODE_OPTIONS: `--require "${holdStart}"`,
      });
      onTestFinished(async () => {
        await run.stop("SIGKILL");
      });
      const pid = run.child.pid as number;
      let children: number[] = [];
      await vi.waitFor(
        () => {
          children = childPids(pid);
          expect(children).toHaveLength(5);
        },
        { timeout: 30_000, interval: 50 },
      );
      const sent = Date.now();
      run.child.kill(signal);
      expect(await run.exited).toBe(0);
      expect(Date.now() - sent).toBeLessThan(10_000);
      expect(run.output()).toBe("");
      expect(children.filter(alive)).toEqual([]);
    },
    60_000,
  );
});
