import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from "vitest";
import { boundedHeapFlags, mallocEnv, serviceHeapFlags } from "../../src/lib/node-options.js";
import {
  freePort,
  type Running,
  startChatmesh,
  waitForOutput,
  waitHealthy,
} from "../fixtures/processes.js";

/** Each direct child of `pid` (Linux /proc): its last argument, its NODE_OPTIONS and its malloc threshold. */
function childrenOf(
  pid: number,
): { name: string; nodeOptions: string | undefined; malloc: string | undefined }[] {
  const ids = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/);
  return ids.map((id) => {
    const args = readFileSync(`/proc/${id}/cmdline`, "utf8").split("\0").filter(Boolean);
    const env = readFileSync(`/proc/${id}/environ`, "utf8").split("\0");
    const value = (name: string) =>
      env.find((e) => e.startsWith(`${name}=`))?.slice(name.length + 1);
    return {
      name: args.at(-1) ?? "",
      nodeOptions: value("NODE_OPTIONS"),
      malloc: value("MALLOC_MMAP_THRESHOLD_"),
    };
  });
}

describe("chatmesh client (the seed's client)", () => {
  const env: Record<string, string> = {};
  const procs: Running[] = [];
  beforeAll(async () => {
    const filterPort = await freePort();
    const llmPort = await freePort();
    Object.assign(env, {
      FILTER_PORT: String(filterPort),
      LLM_PORT: String(llmPort),
      FILTER_URL: `http://127.0.0.1:${filterPort}`,
      LLM_URL: `http://127.0.0.1:${llmPort}`,
    });
    procs.push(startChatmesh(["filter"], env), startChatmesh(["llm"], env));
    await Promise.all([waitHealthy(filterPort, procs[0]), waitHealthy(llmPort, procs[1])]);
  });
  afterAll(() => Promise.all(procs.map((p) => p.stop())));

  const client = async (text: string) => {
    const run = startChatmesh(["client", text], env);
    const code = await run.exited;
    return { code, out: run.output() };
  };

  it("prints the cleaned text and the reply", async () => {
    expect(await client("这是一条最小链路测试")).toEqual({
      code: 0,
      out: "✅ 过滤后文本： 这是一条最小链路测试\nLLM reply => Echo: 这是一条最小链路测试\n",
    });
    expect((await client("Hello   world   from   Go!")).out).toBe(
      "✅ 过滤后文本： Hello world from Go!\nLLM reply => Echo: Hello world from Go!\n",
    );
  });

  it("prints the seed's line for a blocked text", async () => {
    expect(await client("this has foo inside")).toEqual({
      code: 0,
      out: "❌ 文本被过滤（包含违禁词）： this has foo inside\n",
    });
  });

  it("exits 1 with one line when a service is down", async () => {
    const port = await freePort();
    const run = startChatmesh(["client", "hi"], { ...env, FILTER_URL: `http://127.0.0.1:${port}` });
    expect(await run.exited).toBe(1);
    expect(run.output()).toMatch(/^❌ filter failed: .+\n$/);
  });
});

describe("starting a process", () => {
  it("stops with one line naming a bad variable", async () => {
    const run = startChatmesh(["token"], { TOKEN_PORT: "abc" });
    expect(await run.exited).toBe(1);
    expect(run.output()).toBe(
      'chatmesh token: TOKEN_PORT must be an integer from 0 to 65535, got "abc"\n',
    );
  });

  it("stops with one line naming the port and its variable when the port is taken", async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
    const { port } = blocker.address() as net.AddressInfo;
    try {
      const run = startChatmesh(["filter"], { FILTER_PORT: String(port) });
      expect(await run.exited).toBe(1);
      expect(run.output().trim().split("\n").at(-1)).toBe(
        `chatmesh filter: port ${port} on 127.0.0.1 is already in use (set FILTER_PORT to move it)`,
      );
    } finally {
      blocker.close();
    }
  });

  it.each([
    [
      "no.such.host.invalid",
      "cannot be resolved to an address (set HOST to an address or a known name)",
    ],
    ["192.0.2.1", "is not an address of this machine (set HOST to one, or 0.0.0.0 for all)"],
  ])("stops with one line naming HOST when HOST=%s cannot be bound", async (host, problem) => {
    const run = startChatmesh(["filter"], { HOST: host, FILTER_PORT: "0" });
    expect(await run.exited).toBe(1);
    const lines = run.output().trim().split("\n");
    expect(lines.at(-1)).toBe(`chatmesh filter: HOST ${host} ${problem}`);
    // Log lines are JSON; nothing else (no stack trace) is printed.
    expect(lines.slice(0, -1).every((line) => line.startsWith("{"))).toBe(true);
  });

  it("prints the usage for --help after a process's name, and takes no other argument", async () => {
    const port = String(await freePort());
    const help = startChatmesh(["token", "--help"], { TOKEN_PORT: port });
    expect(await help.exited).toBe(0);
    expect(help.output()).toMatch(/^usage: chatmesh <command>/);
    const extra = startChatmesh(["token", "extra"], { TOKEN_PORT: port });
    expect(await extra.exited).toBe(2);
    expect(extra.output()).toBe(
      'chatmesh token: takes no arguments, got "extra" (a process is configured by environment variables: see README.md)\n',
    );
    // Neither listened.
    expect(help.output() + extra.output()).not.toContain("listening");
  });

  it("prints the usage for run-all --help and healthcheck --help; run-all takes no other argument", async () => {
    // Ports run-all refuses before it listens anywhere: one that started anyway stops at once.
    const clash = Object.fromEntries(
      ["TOKEN_PORT", "FILTER_PORT", "LLM_PORT", "HISTORY_PORT", "GATEWAY_PORT"].map((v) => [
        v,
        "1",
      ]),
    );
    for (const args of [
      ["run-all", "--help"],
      ["run-all", "-h"],
      ["healthcheck", "--help"],
    ]) {
      const help = startChatmesh(args, clash);
      expect({ args, code: await help.exited }).toEqual({ args, code: 0 });
      expect(help.output()).toMatch(/^usage: chatmesh <command>\n/);
    }
    const extra = startChatmesh(["run-all", "now"], clash);
    expect(await extra.exited).toBe(2);
    expect(extra.output()).toBe(
      'chatmesh run-all: takes no arguments, got "now" (a process is configured by environment variables: see README.md)\n',
    );
  });

  it("prints the client's usage when it is given no text", async () => {
    const run = startChatmesh(["client"]);
    expect(await run.exited).toBe(2);
    expect(run.output()).toBe('usage: chatmesh client "text" (FILTER_URL, LLM_URL)\n');
  });

  it("the client's lines to a reader gone (`chatmesh client … | head -1`) go nowhere, without a stack trace", async () => {
    const run = startChatmesh(["client", "hi"], {
      // Nothing serves port 1: the client prints its "filter failed" line.
      FILTER_URL: "http://127.0.0.1:1",
      CLIENT_TIMEOUT_MS: "2000",
    });
    run.child.stdout?.destroy();
    expect(await run.exited).toBe(1);
    expect(run.output()).toBe("");
  });

  it("run-all refuses a taken port with one line naming it and its variable", async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
    const { port } = blocker.address() as net.AddressInfo;
    try {
      const run = startChatmesh(["run-all"], { LLM_PORT: String(port) });
      expect(await run.exited).toBe(1);
      expect(run.output()).toBe(
        `run-all: port ${port} is already in use (set LLM_PORT to move llm)\n`,
      );
    } finally {
      blocker.close();
    }
  });
});

describe("run-all", () => {
  it("starts the five processes, prints the URLs, serves a chat, and stops them all on SIGINT", async () => {
    const ports = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
    const [token, filter, llm, history, gateway] = ports;
    const dataDir = await mkdtemp(join(tmpdir(), "chatmesh-run-all-"));
    onTestFinished(() => rm(dataDir, { recursive: true, force: true }));
    const run = startChatmesh(["run-all"], {
      TOKEN_PORT: String(token),
      FILTER_PORT: String(filter),
      LLM_PORT: String(llm),
      HISTORY_PORT: String(history),
      HISTORY_DATABASE_URL: `sqlite:${join(dataDir, "data", "history.db")}`,
      GATEWAY_PORT: String(gateway),
      NODE_OPTIONS: "--max-old-space-size=512",
    });
    await waitForOutput(run, /chatmesh is up/);
    expect(run.output()).toContain(`gateway  http://127.0.0.1:${gateway}`);
    // The services get their heap flags before the caller's own flags; the gateway only the caller's.
    // Every process gets the fixed malloc threshold.
    const malloc = mallocEnv.MALLOC_MMAP_THRESHOLD_;
    expect(
      childrenOf(run.child.pid as number).sort((a, b) => a.name.localeCompare(b.name)),
    ).toEqual([
      { name: "filter", nodeOptions: `${boundedHeapFlags} --max-old-space-size=512`, malloc },
      { name: "gateway", nodeOptions: "--max-old-space-size=512", malloc },
      { name: "history", nodeOptions: `${boundedHeapFlags} --max-old-space-size=512`, malloc },
      { name: "llm", nodeOptions: `${boundedHeapFlags} --max-old-space-size=512`, malloc },
      { name: "token", nodeOptions: `${serviceHeapFlags} --max-old-space-size=512`, malloc },
    ]);
    const res = await fetch(`http://127.0.0.1:${gateway}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "u1", text: "Hello   world   from   Go!" }),
    });
    expect(await res.json()).toEqual({
      cleaned: "Hello world from Go!",
      reply: "Echo: Hello world from Go!",
      remaining: 150,
    });
    await waitForOutput(run, /^gateway \| .*request .*route=\/chat status=200/m);
    expect(run.output()).toContain(`history  http://127.0.0.1:${history}`);
    await vi.waitFor(async () => {
      const page = await fetch(`http://127.0.0.1:${gateway}/history?user_id=u1`);
      expect(((await page.json()) as { items: unknown[] }).items).toMatchObject([
        { text: "Hello world from Go!" },
      ]);
    });
    run.child.kill("SIGINT");
    expect(await run.exited).toBe(0);
    for (const port of ports) {
      await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
    }
  });
});
