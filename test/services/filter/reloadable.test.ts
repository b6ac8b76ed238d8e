import { randomBytes } from "node:crypto";
import {
  appendFileSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { Registry } from "prom-client";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  createReloadableMatcher,
  type ReloadableMatcher,
} from "../../../src/services/filter/reloadable.js";

// fs events and reads are slow on a loaded machine: wait generously.
const poll = { timeout: 15_000, interval: 50 };

let dir: string;
let file: string;
let lines: { level: number; msg: string; err?: { message: string }; ignored?: number }[];
let matcher: ReloadableMatcher | undefined;

/** A logger into this test's `lines`, so that a late line of an earlier test stays out. */
function logger() {
  const sink = lines;
  return pino(
    { level: "info" },
    new Writable({
      write(chunk, _enc, done) {
        sink.push(JSON.parse(String(chunk)));
        done();
      },
    }),
  );
}

/** Saves the way editors do: a new file renamed over the old one. */
function replaceAtomically(content: string) {
  const tmp = join(dir, `.terms.txt.${process.hrtime.bigint()}.tmp`);
  writeFileSync(tmp, content);
  renameSync(tmp, file);
}

const errors = () => lines.filter((l) => l.level >= 50);

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "chatmesh-reload-"));
  file = join(dir, "terms.txt");
  lines = [];
});
afterEach(() => {
  matcher?.close();
  matcher = undefined;
  rmSync(dir, { recursive: true, force: true });
});

describe("createReloadableMatcher", () => {
  it("follows every change of the file, however it is written", async () => {
    writeFileSync(file, "one\n");
    const m = await createReloadableMatcher(file, logger());
    matcher = m;
    expect(m.matches("one here")).toBe(true);

    replaceAtomically("two\n");
    await expect.poll(() => m.matches("two here"), poll).toBe(true);
    expect(m.matches("one here")).toBe(false);

    replaceAtomically("three\n");
    await expect.poll(() => m.matches("three here"), poll).toBe(true);
    expect(m.matches("two here")).toBe(false);

    appendFileSync(file, "four\n");
    await expect.poll(() => m.matches("four here"), poll).toBe(true);

    writeFileSync(file, "five\n");
    await expect.poll(() => m.matches("five here"), poll).toBe(true);
    expect(m.matches("three here")).toBe(false);

    rmSync(file);
    await expect.poll(() => errors().length, poll).toBeGreaterThan(0);
    expect(m.matches("five here")).toBe(true);
    writeFileSync(file, "six\n");
    await expect.poll(() => m.matches("six here"), poll).toBe(true);
    expect(m.matches("five here")).toBe(false);
  });

  it("ignores changes to other files of the directory", async () => {
    writeFileSync(file, "one\n");
    matcher = await createReloadableMatcher(file, logger());
    writeFileSync(join(dir, "other.txt"), "x\n");
    replaceAtomically("two\n");
    await expect.poll(() => matcher?.matches("two here"), poll).toBe(true);
    expect(lines.filter((l) => l.msg === "banned terms reloaded")).toHaveLength(1);
  });

  it("follows a Kubernetes ConfigMap volume's update: a symlink it goes through renamed over", async () => {
    // The kubelet's layout: terms.txt → ..data/terms.txt, ..data → a timestamped directory.
    const version = (n: number, content: string) => {
      mkdirSync(join(dir, `..2026_11_28_0${n}`));
      writeFileSync(join(dir, `..2026_11_28_0${n}`, "terms.txt"), content);
    };
    version(1, "one\n");
    symlinkSync(`..2026_11_28_01`, join(dir, "..data"));
    symlinkSync(join("..data", "terms.txt"), file);
    const m = await createReloadableMatcher(file, logger());
    matcher = m;
    expect(m.matches("one here")).toBe(true);

    for (const [n, term] of [
      [2, "two"],
      [3, "three"],
    ] as const) {
      version(n, `${term}\n`);
      symlinkSync(`..2026_11_28_0${n}`, join(dir, "..data_tmp"));
      renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
      rmSync(join(dir, `..2026_11_28_0${n - 1}`), { recursive: true });
      await expect.poll(() => m.matches(`${term} here`), poll).toBe(true);
    }
    expect(m.matches("two here")).toBe(false);
    expect(lines.filter((l) => l.msg === "banned terms reloaded")).toHaveLength(2);
    expect(errors()).toEqual([]);
  });

  it("serves calls with the old list while a large new one is built", async () => {
    writeFileSync(file, "old\n");
    const m = await createReloadableMatcher(file, logger());
    matcher = m;
    // 40,000 terms of 4–12 letters take the best part of a second to build
    // at once; none of their letters is in "old here".
    const letters = "abcfgijkmnpqstuvwxyz";
    const terms = Array.from({ length: 40_000 }, () =>
      Array.from(
        randomBytes(4 + ((randomBytes(1)[0] as number) % 9)),
        (b) => letters[b % letters.length],
      ).join(""),
    );
    writeFileSync(file, `${terms.join("\n")}\n`);
    // A call every millisecond: when each was served, and with which list.
    const served: { at: number; old: boolean }[] = [];
    const calls = setInterval(
      () => served.push({ at: performance.now(), old: m.matches("old here") }),
      1,
    );
    const started = performance.now();
    try {
      await m.reload();
    } finally {
      clearInterval(calls);
    }
    const took = performance.now() - started;
    const times = [started, ...served.map((s) => s.at), performance.now()];
    const longestWait = Math.max(...times.slice(1).map((at, i) => at - (times[i] as number)));
    // Built at once, the list would keep calls waiting for most of the reload.
    expect(longestWait).toBeLessThan(took / 2);
    expect(served.filter((s) => s.old).length).toBeGreaterThan(2);
    expect(m.matches("old here")).toBe(false);
    expect(m.matches(`x ${terms[12_345]} y`)).toBe(true);
  });

  it("reloads while other files of the directory change all the time", async () => {
    writeFileSync(file, "one\n");
    const m = await createReloadableMatcher(file, logger());
    matcher = m;
    const busy = setInterval(() => appendFileSync(join(dir, "busy.log"), "line\n"), 20);
    try {
      replaceAtomically("two\n");
      await expect.poll(() => m.matches("two here"), poll).toBe(true);
    } finally {
      clearInterval(busy);
    }
  });

  it("stops a reload under way when closed, and reloads no more", async () => {
    writeFileSync(file, "old\n");
    const m = await createReloadableMatcher(file, logger());
    // Large enough that its reload (about 0.3 s here) is still under way 30 ms later.
    const terms = Array.from({ length: 300_000 }, (_, i) => `term${i}`);
    writeFileSync(file, `${terms.join("\n")}\nnew\n`);
    const reloading = m.reload();
    await new Promise((r) => setTimeout(r, 30));
    m.close();
    await reloading;
    await m.reload();
    expect(m.matches("old here")).toBe(true);
    expect(m.matches("new here")).toBe(false);
    expect(lines.filter((l) => l.msg === "banned terms reloaded")).toEqual([]);
  });

  it("lets the newest read win when reloads overlap", async () => {
    // A large file (mostly comments) takes far longer to read and build
    // than the small one that replaces it while it is being read.
    const comment = `# ${"x".repeat(70)}\n`;
    writeFileSync(file, `stale\n${comment.repeat(400_000)}`);
    const m = await createReloadableMatcher(file, logger());
    matcher = m;
    writeFileSync(join(dir, "small.txt"), "fresh\n");

    const first = m.reload();
    // Long enough for the first reload to have opened the large file.
    await new Promise((r) => setTimeout(r, 30));
    renameSync(join(dir, "small.txt"), file);
    const second = m.reload();
    await Promise.all([first, second]);

    expect(m.matches("fresh here")).toBe(true);
    expect(m.matches("stale here")).toBe(false);
  });

  it("keeps the current list when the file is read with no terms (emptied by a write under way)", async () => {
    writeFileSync(file, "foo\n");
    const m = await createReloadableMatcher(file, logger());
    matcher = m;
    writeFileSync(file, "# only a comment\n");
    await expect.poll(() => errors().length, poll).toBeGreaterThan(0);
    expect(errors()[0]?.err?.message).toBe(
      "the file holds no terms; a list with no terms takes a restart",
    );
    expect(m.matches("foo here")).toBe(true);
    // The write ends: its terms are taken.
    writeFileSync(file, "bar\n");
    await expect.poll(() => m.matches("bar here"), poll).toBe(true);
    expect(m.matches("foo here")).toBe(false);
  });

  it("warns of terms of invisible characters only, which ban nothing, at the start and on a reload", async () => {
    writeFileSync(file, "foo\n\u200b\n");
    const m = await createReloadableMatcher(file, logger());
    matcher = m;
    const warnings = () => lines.filter((l) => l.level === 40);
    expect(warnings()).toEqual([
      expect.objectContaining({
        msg: "banned terms of invisible characters only are ignored",
        ignored: 1,
      }),
    ]);
    writeFileSync(file, "bar\n\u00ad\n\u2060\ufe0f\n");
    await m.reload();
    expect(warnings()[1]).toMatchObject({ ignored: 2 });
    expect(m.matches("bar here")).toBe(true);
  });

  it("keeps the current list when the file's terms are all empty once normalised (invisible characters only)", async () => {
    writeFileSync(file, "foo\n");
    const m = await createReloadableMatcher(file, logger());
    matcher = m;
    writeFileSync(file, "\u200b\n\u2060\u00ad\n");
    await m.reload();
    expect(errors()[0]?.err?.message).toBe(
      "the file holds no terms once normalised (invisible characters only, in all 2); a list with no terms takes a restart",
    );
    expect(lines.filter((l) => l.msg === "banned terms reloaded")).toEqual([]);
    expect(m.size).toBe(1);
    expect(m.matches("foo here")).toBe(true);
  });

  it("counts reloads by result, and shows the terms in use, on /metrics", async () => {
    writeFileSync(file, "foo\nbar\n");
    const registry = new Registry();
    const m = await createReloadableMatcher(file, logger(), registry);
    matcher = m;
    const reloads = async () =>
      Object.fromEntries(
        (
          (await registry.getSingleMetric("chatmesh_filter_terms_reloads_total")?.get())?.values ??
          []
        ).map((v) => [v.labels.result, v.value]),
      );
    const terms = async () =>
      (await registry.getSingleMetric("chatmesh_filter_terms")?.get())?.values[0]?.value;
    expect(await terms()).toBe(2);

    // The watch reloads too: each outcome is counted at least once.
    rmSync(file);
    await expect.poll(async () => (await reloads()).failed, poll).toBeGreaterThan(0);
    expect((await reloads()).reloaded).toBeUndefined();
    expect(await terms()).toBe(2);

    writeFileSync(file, "baz\n");
    await expect.poll(async () => (await reloads()).reloaded, poll).toBeGreaterThan(0);
    expect(await terms()).toBe(1);
  });

  it("keeps the current list when the file is rewritten with bytes that are not UTF-8", async () => {
    writeFileSync(file, "foo\n");
    const m = await createReloadableMatcher(file, logger());
    matcher = m;
    writeFileSync(file, Buffer.concat([randomBytes(4096), Buffer.from([0xff, 0x0a])]));
    await expect.poll(() => errors().length, poll).toBeGreaterThan(0);
    expect(errors()[0]?.err?.message).toMatch(/^FILTER_TERMS_FILE must name a readable UTF-8 file/);
    expect(lines.filter((l) => l.msg === "banned terms reloaded")).toEqual([]);
    expect(m.matches("foo here")).toBe(true);
    expect(m.matches("\uFFFD")).toBe(false);
  });
});
