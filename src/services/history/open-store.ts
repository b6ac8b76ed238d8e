import { sql } from "kysely";
import type { DatabaseUrl } from "../../lib/config.js";
import { type OpenDatabaseOptions, openHistoryDatabase, unusableDatabase } from "./database.js";
import type { HistoryStore } from "./history-store.js";
import { migrateHistory } from "./migrations.js";
import { createSqlHistoryStore } from "./sql-store.js";

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
    await migrateHistory(db, dialect);
  } catch (err) {
    await db.destroy();
    throw err;
  }
  return createSqlHistoryStore(db);
}
