import { type Kysely, type Migration, Migrator, sql } from "kysely";
import type { Dialect, HistoryDatabase } from "./database.js";

/**
 * The schema, as code: one entry per change, applied in name order, never
 * edited once released. Column types differ by dialect only where SQL does
 * (SQLite wants INTEGER PRIMARY KEY for its row id; MySQL needs utf8mb4 with
 * a binary collation so that user ids compare exactly, and DATETIME(3) for
 * milliseconds).
 */
export function historyMigrations(dialect: Dialect): Record<string, Migration> {
  const mysql = dialect === "mysql";
  return {
    "0001_history_entries": {
      async up(db) {
        let table = db.schema
          .createTable("history_entries")
          .addColumn("id", mysql ? "bigint" : "integer", (c) => c.primaryKey().autoIncrement())
          .addColumn("user_key", mysql ? "char(64)" : "text", (c) => c.notNull())
          .addColumn("user_id", "text", (c) => c.notNull())
          .addColumn("request_id", mysql ? "varchar(128)" : "text")
          .addColumn("text", mysql ? sql`mediumtext` : "text", (c) => c.notNull())
          .addColumn("reply", mysql ? sql`mediumtext` : "text", (c) => c.notNull())
          .addColumn("created_at", mysql ? "datetime(3)" : "text", (c) => c.notNull());
        if (mysql) {
          table = table.modifyEnd(sql`engine=InnoDB default charset=utf8mb4 collate=utf8mb4_bin`);
        }
        await table.execute();
        await db.schema
          .createIndex("history_entries_request_id")
          .on("history_entries")
          .column("request_id")
          .unique()
          .execute();
        await db.schema
          .createIndex("history_entries_user_page")
          .on("history_entries")
          .columns(["user_key", "created_at", "id"])
          .execute();
      },
      async down(db) {
        await db.schema.dropTable("history_entries").execute();
      },
    },
  };
}

/**
 * Brings the schema up to date. Kysely's migrator takes a lock, so replicas
 * starting together apply each migration once.
 */
export async function migrateHistory(db: Kysely<HistoryDatabase>, dialect: Dialect): Promise<void> {
  const migrations = historyMigrations(dialect);
  const migrator = new Migrator({
    db,
    provider: { getMigrations: async () => migrations },
    // Own names, so the history schema can share a database with others.
    migrationTableName: "history_migration",
    migrationLockTableName: "history_migration_lock",
  });
  // Kysely locks migrations on MySQL; on SQLite it takes no lock at all
  // (one connection, it assumes one process), so replicas starting together
  // on one file each created the tables and all but one failed. A write
  // transaction taken first makes the others wait (busy_timeout), then find
  // the schema done. SQLite's DDL is transactional: a failure leaves none.
  if (dialect === "sqlite") await sql`begin immediate`.execute(db);
  const { error } = await migrator
    .migrateToLatest()
    .catch((err: unknown) => ({ error: err as unknown }));
  if (dialect === "sqlite") await sql.raw(error === undefined ? "commit" : "rollback").execute(db);
  if (error !== undefined) {
    throw new Error("history schema migration failed", { cause: error });
  }
}
