import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { sql } from "kysely";
import { afterEach, describe, expect, it } from "vitest";
import {
  openHistoryDatabase,
  sharedThreadWalAutocheckpoint,
  sqliteCacheSize,
  sqliteWalAutocheckpoint,
} from "../../../src/services/history/database.js";
import { createSqliteDatabase, type TestDatabase } from "../../fixtures/databases.js";

describe("the SQLite history database", () => {
  let database: TestDatabase | undefined;
  afterEach(() => database?.drop());

  it("runs in WAL mode with SQLite's own 2 MiB page cache and checkpoints every 10,000 pages", async () => {
    database = await createSqliteDatabase();
    const { db } = await openHistoryDatabase({
      dialect: "sqlite",
      path: database.url.slice("sqlite:".length),
    });
    try {
      const pragma = async (name: string) =>
        (await sql.raw(`PRAGMA ${name}`).execute(db)).rows[0] as Record<string, unknown>;
      expect(await pragma("journal_mode")).toEqual({ journal_mode: "wal" });
      expect(sqliteCacheSize).toBe(-2000);
      expect(await pragma("cache_size")).toEqual({ cache_size: sqliteCacheSize });
      expect(sqliteWalAutocheckpoint).toBe(10_000);
      expect(await pragma("wal_autocheckpoint")).toEqual({
        wal_autocheckpoint: sqliteWalAutocheckpoint,
      });
    } finally {
      await db.destroy();
    }
  });

  it("switches a new file to WAL once another connection's write lock on it is gone", async () => {
    database = await createSqliteDatabase();
    const path = database.url.slice("sqlite:".length);
    mkdirSync(dirname(path), { recursive: true });
    // Another replica creating the file, in its first write transaction.
    const holder = new Database(path);
    holder.exec("begin immediate; create table other(x)");
    const released = new Promise((resolve) =>
      setTimeout(() => resolve(holder.exec("commit")), 300),
    );
    try {
      const { db } = await openHistoryDatabase({ dialect: "sqlite", path });
      try {
        const { rows } = await sql.raw("PRAGMA journal_mode").execute(db);
        expect(rows[0]).toEqual({ journal_mode: "wal" });
      } finally {
        await db.destroy();
      }
    } finally {
      await released;
      holder.close();
    }
  });

  it("checkpoints at SQLite's default where it shares the chats' thread (chatmesh all)", async () => {
    database = await createSqliteDatabase();
    const { db } = await openHistoryDatabase(
      { dialect: "sqlite", path: database.url.slice("sqlite:".length) },
      { walAutocheckpoint: sharedThreadWalAutocheckpoint },
    );
    try {
      const { rows } = await sql.raw("PRAGMA wal_autocheckpoint").execute(db);
      expect(sharedThreadWalAutocheckpoint).toBe(1_000);
      expect(rows[0]).toEqual({ wal_autocheckpoint: 1_000 });
    } finally {
      await db.destroy();
    }
  });
});
