import type { DatabaseUrl } from "../../lib/config.js";
import { type OpenDatabaseOptions, openHistoryDatabase } from "./database.js";
import type { HistoryStore } from "./history-store.js";
import { migrateHistory } from "./migrations.js";
import { createSqlHistoryStore } from "./sql-store.js";

/**
 * Opens the database of a HISTORY_DATABASE_URL, brings its schema up to date
 * and returns the store over it. A failed migration closes the database.
 */
export async function openHistoryStore(
  url: DatabaseUrl,
  options: OpenDatabaseOptions = {},
): Promise<HistoryStore> {
  const { db, dialect } = await openHistoryDatabase(url, options);
  try {
    await migrateHistory(db, dialect);
  } catch (err) {
    await db.destroy();
    throw err;
  }
  return createSqlHistoryStore(db);
}
