import { sql } from "kysely";
import type { DatabaseUrl } from "../../lib/config.js";
import { type OpenDatabaseOptions, openHistoryDatabase, unusableDatabase } from "./database.js";
import type { HistoryStore } from "./history-store.js";
import { migrateHistory } from "./migrations.js";
import { createSqlHistoryStore } from "./sql-store.js";

/**
 * Longest a query of the migration may go without an answer on MySQL. The
 * serving queries' deadline (mysqlQueryTimeoutMs, 5 s) cut short a replica
 * waiting for the migration lock while another one migrates, or a schema
 * change of a large table: the start failed with "Can't add new command when
 * connection is in closed state". Kysely's lock itself waits up to an hour.
 */
export const migrationQueryTimeoutMs = 15 * 60_000;

/**
 * Opens the database of a HISTORY_DATABASE_URL, brings its schema up to date
 * and returns the store over it. A database that cannot be opened or reached
 * is a ConfigError naming the variable; a migration that fails past that is
 * an error with its cause (and stack). Either closes the database.
 */
export async function openHistoryStore(
  url: DatabaseUrl,
  options: OpenDatabaseOptions = {},
): Promise<HistoryStore> {
  const { db, dialect } = await openHistoryDatabase(url, options);
  try {
    // MySQL connects on first use: a server that is not there, or refuses
    // these credentials or this database, fails here rather than mid-migration.
    await sql`select 1`.execute(db);
  } catch (err) {
    await db.destroy();
    throw unusableDatabase(url, err);
  }
  try {
    // SQLite has no query deadline: its own connection migrates.
    const migrating =
      dialect === "mysql"
        ? (await openHistoryDatabase(url, { ...options, queryTimeoutMs: migrationQueryTimeoutMs }))
            .db
        : db;
    try {
      await migrateHistory(migrating, dialect);
    } finally {
      if (migrating !== db) await migrating.destroy();
    }
  } catch (err) {
    await db.destroy();
    throw err;
  }
  return createSqlHistoryStore(db);
}
