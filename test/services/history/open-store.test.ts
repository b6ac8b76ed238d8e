import { execFile } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { createConnection } from "mysql2/promise";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, type DatabaseUrl } from "../../../src/lib/config.js";
import { openHistoryStore } from "../../../src/services/history/open-store.js";
import { createMysqlDatabase, createSqliteDatabase } from "../../fixtures/databases.js";
import { repoRoot } from "../../fixtures/processes.js";
import { startSilentProxy } from "../../fixtures/silent-proxy.js";

const dir = mkdtempSync(join(tmpdir(), "chatmesh-open-store-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const refusal = (shown: string, reason: string) =>
  `HISTORY_DATABASE_URL must name a database this process can open, got "${shown}" (${reason})`;

/** `count` processes opening (and migrating) the fresh SQLite file `path` at the same moment: what each printed. */
async function openTogether(path: string, count: number): Promise<{ ok: boolean }[]> {
  const script = fileURLToPath(new URL("../../fixtures/open-history-at.ts", import.meta.url));
  // Time for every process to load first (tsx, the store's modules).
  const at = String(Date.now() + 2_500);
  return Promise.all(
    Array.from({ length: count }, async () => {
      const { stdout } = await promisify(execFile)(
        process.execPath,
        ["--import", "tsx", script, path, at],
        { cwd: repoRoot },
      );
      return JSON.parse(stdout) as { ok: boolean };
    }),
  );
}

describe("history replicas starting together on one SQLite file", () => {
  it("migrate it once: none fails on a table another one created, or on its lock", async () => {
    for (let round = 0; round < 3; round++) {
      const path = join(dir, `together-${round}`, "history.db");
      expect(await openTogether(path, 4)).toEqual(Array(4).fill({ ok: true }));
    }
  }, 60_000);
});

describe("opening the history store", () => {
  it.each([
    ["a file that is not a database", "not-a-database", "file is not a database"],
    ["a directory", ".", "unable to open database file"],
  ])("refuses %s with a ConfigError naming HISTORY_DATABASE_URL", async (_, name, reason) => {
    writeFileSync(join(dir, "not-a-database"), Buffer.alloc(4096, 0xab));
    const path = join(dir, name);
    const open = () => openHistoryStore({ dialect: "sqlite", path });
    await expect(open()).rejects.toThrow(ConfigError);
    await expect(open()).rejects.toThrow(refusal(`sqlite:${path}`, reason));
  });

  it("refuses a path below a file with a ConfigError", async () => {
    const open = () => openHistoryStore({ dialect: "sqlite", path: "/dev/null/history.db" });
    await expect(open()).rejects.toThrow(ConfigError);
    await expect(open()).rejects.toThrow(
      /^HISTORY_DATABASE_URL must name a database this process can open, got "sqlite:\/dev\/null\/history\.db" \(EEXIST: /,
    );
  });

  it("refuses a SQLite file it may only read with a ConfigError, not a start that fails every append", async () => {
    const readOnly = join(dir, "read-only");
    const path = join(readOnly, "history.db");
    await (await openHistoryStore({ dialect: "sqlite", path })).close();
    chmodSync(path, 0o444);
    // The directory stays writable: SQLite may make its -wal and -shm files.
    chmodSync(readOnly, 0o777);
    chmodSync(dir, 0o755);
    const script = fileURLToPath(new URL("../../fixtures/open-history-at.ts", import.meta.url));
    // root writes whatever the mode says: the file is opened as nobody then.
    const nobody = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--import", "tsx", script, path, "0"],
      { cwd: repoRoot, ...nobody },
    );
    expect(JSON.parse(stdout)).toEqual({
      ok: false,
      error: `ConfigError: ${refusal(`sqlite:${path}`, "attempt to write a readonly database")}`,
    });
  });

  it("refuses a MySQL server that is not there, hiding the password", async () => {
    const url: DatabaseUrl = { dialect: "mysql", url: "mysql://app:hunter2@127.0.0.1:1/test" };
    await expect(openHistoryStore(url)).rejects.toThrow(
      new ConfigError(
        refusal("mysql://app:***@127.0.0.1:1/test", "connect ECONNREFUSED 127.0.0.1:1"),
      ),
    );
  });

  it("keeps a migration that fails on a reachable database an error with its cause", async () => {
    const database = await createSqliteDatabase();
    try {
      const url: DatabaseUrl = { dialect: "sqlite", path: database.url.slice("sqlite:".length) };
      await (await openHistoryStore(url)).close();
      await database.execute("DROP TABLE history_migration");
      const failed = await openHistoryStore(url).catch((err: unknown) => err);
      expect(failed).not.toBeInstanceOf(ConfigError);
      expect(failed).toMatchObject({
        message: "history schema migration failed",
        cause: { message: expect.stringContaining("history_entries") },
      });
    } finally {
      await database.drop();
    }
  });
});

const mysql = await createMysqlDatabase();
if ("skip" in mysql) console.warn(`skipping the MySQL store opening: ${mysql.skip}`);

describe.skipIf("skip" in mysql)("opening the history store on MySQL", () => {
  afterAll(async () => {
    if (!("skip" in mysql)) await mysql.drop();
  });

  it("refuses credentials the server refuses with a ConfigError, hiding the password", async () => {
    if ("skip" in mysql) return;
    const url = new URL(mysql.url);
    url.username = "chatmesh_nobody";
    url.password = "hunter2";
    const failed = await openHistoryStore({ dialect: "mysql", url: url.toString() }).catch(
      (err: unknown) => err,
    );
    expect(failed).toBeInstanceOf(ConfigError);
    expect((failed as Error).message).toMatch(
      /^HISTORY_DATABASE_URL must name a database this process can open, got "mysql:\/\/chatmesh_nobody:\*\*\*@.+" \(Access denied for user 'chatmesh_nobody'@/,
    );
    expect((failed as Error).message).not.toContain("hunter2");
  });

  it("drops a connection gone silent and appends over a new one, without a restart", async () => {
    if ("skip" in mysql) return;
    const url = new URL(mysql.url);
    const proxy = await startSilentProxy({ host: url.hostname, port: Number(url.port || 3306) });
    url.host = `127.0.0.1:${proxy.port}`;
    const store = await openHistoryStore(
      { dialect: "mysql", url: url.toString() },
      { queryTimeoutMs: 500 },
    );
    const append = (requestId: string) =>
      store.append({
        userId: "silent",
        requestId,
        text: "hi",
        reply: "Echo: hi",
        createdAtMs: Date.now(),
      });
    try {
      expect((await append("before")).created).toBe(true);
      // A partition: the pool's connections hear nothing and are never closed.
      proxy.silence();
      const started = Date.now();
      await expect(append("during")).rejects.toThrow("Query inactivity timeout");
      expect(Date.now() - started).toBeLessThan(2_000);
      // The gateway appends it again: over a new connection, like every later one.
      expect((await append("during")).created).toBe(true);
      expect((await append("after")).created).toBe(true);
      const listed = await store.list({ userId: "silent", pageSize: 10, pageToken: "" });
      expect(listed.entries.map((e) => e.requestId)).toEqual(["after", "during", "before"]);
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  it("waits for the migration lock another process holds longer than a query's deadline", async () => {
    if ("skip" in mysql) return;
    const database = await createMysqlDatabase();
    if ("skip" in database) return;
    const url = new URL(database.url);
    // Kysely's migration lock: the name every process migrating with it takes.
    const lock = "'ea586330-2c93-47c8-908d-981d9d270f9d'";
    const holder = await createConnection({
      host: url.hostname,
      port: Number(url.port || 3306),
      user: decodeURIComponent(url.username),
      password: decodeURIComponent(url.password),
    });
    try {
      await holder.query(`select get_lock(${lock}, 10)`);
      const released = new Promise((resolve) => setTimeout(resolve, 1_500)).then(() =>
        holder.query(`select release_lock(${lock})`),
      );
      const started = Date.now();
      const store = await openHistoryStore(
        { dialect: "mysql", url: database.url },
        { queryTimeoutMs: 500 },
      );
      await released;
      expect(Date.now() - started).toBeGreaterThanOrEqual(1_400);
      const appended = await store.append({
        userId: "after-lock",
        requestId: "after-lock",
        text: "hi",
        reply: "Echo: hi",
        createdAtMs: Date.now(),
      });
      expect(appended.created).toBe(true);
      await store.close();
    } finally {
      await holder.end();
      await database.drop();
    }
  });

  it("refuses an unknown database with a ConfigError", async () => {
    if ("skip" in mysql) return;
    const url = new URL(mysql.url);
    url.pathname = `${url.pathname}_missing`;
    await expect(openHistoryStore({ dialect: "mysql", url: url.toString() })).rejects.toThrow(
      /\(Unknown database '\w+_missing'\)$/,
    );
  });
});
