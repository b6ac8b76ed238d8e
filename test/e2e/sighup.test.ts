import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  freePort,
  type ProcessName,
  type Running,
  type Stack,
  startChatmesh,
  startStack,
  waitForOutput,
} from "../fixtures/processes.js";

// fs events are slow on a loaded machine: wait generously.
const poll = { timeout: 15_000, interval: 100 };

const dir = mkdtempSync(join(tmpdir(), "chatmesh-keys-"));
const keysFile = join(dir, "keys");
const alice = "alice-key-0123456789abcdef";
const alice2 = "alice-key-rotated-0123456789";
const bob = "bob-key-0123456789abcdefgh";
let stack: Stack;

beforeAll(async () => {
  writeFileSync(keysFile, `${alice} alice\n`);
  stack = await startStack({ API_KEYS_FILE: keysFile });
}, 60_000);
afterAll(async () => {
  await stack?.stopAll();
  rmSync(dir, { recursive: true, force: true });
});

/** The status of GET /quota with `key` as the bearer. */
async function quotaStatus(key: string): Promise<number> {
  const res = await fetch(`${stack.gatewayUrl}/quota`, {
    headers: { authorization: `Bearer ${key}` },
  });
  await res.arrayBuffer();
  return res.status;
}

function proc(name: ProcessName): Running {
  const running = stack.procs.get(name);
  if (running === undefined) throw new Error(`no ${name} process`);
  return running;
}

/** Replaces the keys file the way editors and secret volumes do: a new file renamed over it. */
function writeKeys(content: string): void {
  writeFileSync(`${keysFile}.tmp`, content);
  renameSync(`${keysFile}.tmp`, keysFile);
}

describe("API_KEYS_FILE, changed while the gateway runs", () => {
  it("adds, rotates and revokes keys without a restart", async () => {
    expect(await quotaStatus(alice)).toBe(200);
    expect(await quotaStatus(bob)).toBe(401);
    writeKeys(`${alice2} alice\n${bob} bob\n`);
    await expect.poll(() => quotaStatus(bob), poll).toBe(200);
    expect(await quotaStatus(alice2)).toBe(200);
    expect(await quotaStatus(alice)).toBe(401);
  });

  it("keeps the keys it has, logging one error, when the new file is malformed", async () => {
    const gateway = proc("gateway");
    writeKeys(`${bob} bob\nshort carol\n`);
    await waitForOutput(gateway, /API keys not reloaded; the previous keys stay/, 15_000);
    expect(gateway.output()).toMatch(/API_KEYS_FILE line 2: a key must have at least 16/);
    expect(await quotaStatus(alice2)).toBe(200);
    expect(await quotaStatus(bob)).toBe(200);
  });

  it("is read again on SIGHUP", async () => {
    const gateway = proc("gateway");
    // Written in place with its time kept: a change the watch may not see.
    writeFileSync(keysFile, `${alice} alice\n`);
    gateway.child.kill("SIGHUP");
    await expect.poll(() => quotaStatus(alice), poll).toBe(200);
    expect(await quotaStatus(bob)).toBe(401);
    expect(gateway.child.exitCode).toBeNull();
  });
});

describe("SIGHUP", () => {
  it("stops no process: those with nothing to reload say so and serve on", async () => {
    for (const name of ["token", "llm", "history"] as const) {
      proc(name).child.kill("SIGHUP");
      await waitForOutput(proc(name), /"msg":"nothing to reload; still serving"/, 15_000);
    }
    proc("filter").child.kill("SIGHUP");
    await waitForOutput(proc("filter"), /"msg":"banned terms reloaded"/, 15_000);
    const res = await fetch(`${stack.gatewayUrl}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${alice}` },
      body: JSON.stringify({ text: "still here" }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ reply: "Echo: still here" });
    await vi.waitFor(async () => {
      const history = await fetch(`${stack.gatewayUrl}/history`, {
        headers: { authorization: `Bearer ${alice}` },
      });
      expect(JSON.stringify(await history.json())).toContain("still here");
    }, poll);
    for (const running of stack.procs.values()) expect(running.child.exitCode).toBeNull();
  });
});

describe("SIGHUP during start-up", () => {
  it("does not stop a process still connecting to its database", async () => {
    // A database that takes connections and never answers: the history's
    // start-up waits on it.
    let reached: () => void = () => {};
    const connected = new Promise<void>((resolve) => {
      reached = resolve;
    });
    const held = new Set<net.Socket>();
    const blackHole = net.createServer((socket) => {
      held.add(socket);
      reached();
    });
    await new Promise<void>((resolve) => blackHole.listen(0, "127.0.0.1", resolve));
    const { port } = blackHole.address() as net.AddressInfo;
    const history = startChatmesh(["history"], {
      HISTORY_PORT: String(await freePort()),
      HISTORY_DATABASE_URL: `mysql://root@127.0.0.1:${port}/test`,
    });
    try {
      await connected;
      history.child.kill("SIGHUP");
      await new Promise((r) => setTimeout(r, 1_000));
      expect(history.child.signalCode).toBeNull();
      expect(history.child.exitCode).toBeNull();
    } finally {
      await history.stop("SIGKILL");
      for (const socket of held) socket.destroy();
      blackHole.close();
    }
  });
});
