import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { FilterService } from "../../gen/chat/v1/filter_pb.js";
import { heapFlags } from "../../src/lib/node-options.js";
import { freePort, type Running, startChatmesh, waitHealthy } from "../fixtures/processes.js";

// fs events are slow on a loaded machine: wait generously.
const poll = { timeout: 15_000, interval: 50 };

const dir = mkdtempSync(join(tmpdir(), "chatmesh-terms-"));
const file = join(dir, "terms.txt");
let filter: Running;
let baseUrl: string;
let client: ReturnType<typeof createClient<typeof FilterService>>;

beforeAll(async () => {
  writeFileSync(file, "# banned\nfoo\n");
  const port = await freePort();
  baseUrl = `http://127.0.0.1:${port}`;
  filter = startChatmesh(["filter"], { FILTER_PORT: String(port), FILTER_TERMS_FILE: file });
  await waitHealthy(port, filter);
  client = createClient(FilterService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
});
afterAll(async () => {
  await filter?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function blocked(text: string): Promise<boolean> {
  try {
    await client.filter({ text });
    return false;
  } catch (err) {
    if (ConnectError.from(err).code === Code.InvalidArgument) return true;
    throw err;
  }
}

describe("the filter's term list", () => {
  it("is read from FILTER_TERMS_FILE, which replaces the default list", async () => {
    expect(await blocked("foo here")).toBe(true);
    expect(await blocked("bar here")).toBe(false);
  });

  it("is reloaded when the file changes, without a restart", async () => {
    writeFileSync(file, "bar\n");
    await vi.waitFor(async () => expect(await blocked("bar here")).toBe(true), { timeout: 5_000 });
    expect(await blocked("foo here")).toBe(false);
  });

  it("keeps the current list when the file cannot be read, and reloads on SIGHUP", async () => {
    rmSync(file);
    await vi.waitFor(() => expect(filter.output()).toMatch(/banned terms not reloaded/), {
      timeout: 5_000,
    });
    expect(await blocked("bar here")).toBe(true);
    writeFileSync(join(dir, "other.txt"), "unrelated\n");
    writeFileSync(file, "baz\n");
    filter.child.kill("SIGHUP");
    await vi.waitFor(async () => expect(await blocked("baz here")).toBe(true), { timeout: 5_000 });
    expect(filter.child.exitCode).toBeNull();
  });

  it("follows the file across atomic replaces and a delete then create", async () => {
    for (const term of ["qux", "quux"]) {
      writeFileSync(join(dir, "terms.txt.tmp"), `${term}\n`);
      renameSync(join(dir, "terms.txt.tmp"), file);
      await expect.poll(() => blocked(`${term} here`), poll).toBe(true);
    }
    expect(await blocked("qux here")).toBe(false);
    rmSync(file);
    writeFileSync(file, "corge\n");
    await expect.poll(() => blocked("corge here"), poll).toBe(true);
    expect(await blocked("quux here")).toBe(false);
  });

  it("keeps the current list, logging one error, when the file is not UTF-8", async () => {
    const before = filter.output().length;
    writeFileSync(file, Buffer.from("caf\xe9\n", "latin1"));
    await expect.poll(() => filter.output(), poll).toMatch(/not valid UTF-8/);
    // Wait out the settle time of the watch, so that a second reload would show.
    await new Promise((r) => setTimeout(r, 500));
    const reloads = filter
      .output()
      .slice(before)
      .split("\n")
      .filter((line) => line.includes("banned terms"))
      .map((line) => JSON.parse(line) as { level: number; msg: string });
    expect(reloads).toEqual([
      expect.objectContaining({
        level: 50,
        msg: "banned terms not reloaded; the previous list stays",
      }),
    ]);
    expect(await blocked("corge here")).toBe(true);
    expect(await blocked("\uFFFD")).toBe(false);
    const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
    expect(metrics).toMatch(/^chatmesh_filter_terms_reloads_total\{result="failed"\} [1-9]/m);
    expect(metrics).toMatch(/^chatmesh_filter_terms 1$/m);
  });
});

describe("a FILTER_TERMS_FILE of 64 MiB of one-letter lines", () => {
  it("stops the process at start-up with one line, within the heap run-all and Compose give it", async () => {
    const many = join(dir, "many.txt");
    writeFileSync(many, "a\n".repeat(32 * 1_048_576));
    const run = startChatmesh(["filter"], {
      FILTER_PORT: String(await freePort()),
      FILTER_TERMS_FILE: many,
      NODE_OPTIONS: heapFlags.filter as string,
    });
    const stillRunning = new Promise((r) => setTimeout(() => r("still running"), 30_000));
    try {
      expect(await Promise.race([run.exited, stillRunning])).toBe(1);
      expect(run.output()).toBe(
        `chatmesh filter: FILTER_TERMS_FILE must hold at most 100000 terms of 1048576 characters in all, got "${many}" (33554432 terms, 33554432 characters)\n`,
      );
    } finally {
      await run.stop();
      rmSync(many);
    }
  }, 40_000);
});

describe("a FILTER_TERMS_FILE that is not UTF-8", () => {
  it("stops the process at start-up with one line naming the variable", async () => {
    const latin1 = join(dir, "latin1.txt");
    writeFileSync(latin1, Buffer.from("caf\xe9\n", "latin1"));
    const run = startChatmesh(["filter"], {
      FILTER_PORT: String(await freePort()),
      FILTER_TERMS_FILE: latin1,
    });
    const stillRunning = new Promise((r) => setTimeout(() => r("still running"), 20_000));
    try {
      expect(await Promise.race([run.exited, stillRunning])).toBe(1);
      expect(run.output()).toBe(
        `chatmesh filter: FILTER_TERMS_FILE must name a readable UTF-8 file, got "${latin1}" (not valid UTF-8)\n`,
      );
    } finally {
      await run.stop();
    }
  });
});
