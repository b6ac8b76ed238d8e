import { createHash } from "node:crypto";
import { type Kysely, type Selectable, sql } from "kysely";
import type { HistoryDatabase, HistoryEntriesTable } from "./database.js";
import {
  type AppendResult,
  type Entry,
  HistoryInputError,
  type HistoryStore,
  type ListQuery,
  maxRequestIdLength,
  type NewEntry,
  type Page,
  RequestIdConflictError,
  resolvePageSize,
} from "./history-store.js";
import { decodePageToken, encodePageToken } from "./page-token.js";
import { storableTime, timeFromDb, timeToDb } from "./time.js";

const columns = ["id", "user_id", "request_id", "text", "reply", "created_at"] as const;
type Row = Pick<Selectable<HistoryEntriesTable>, (typeof columns)[number]>;

const userKeyOf = (userId: string) => createHash("sha256").update(userId).digest("hex");

const toEntry = (row: Row): Entry => ({
  id: String(row.id),
  userId: row.user_id,
  requestId: row.request_id ?? "",
  text: row.text,
  reply: row.reply,
  createdAtMs: timeFromDb(row.created_at),
});

/** A duplicate key, as SQLite (better-sqlite3) and MySQL (mysql2) report it. */
function isUniqueViolation(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "SQLITE_CONSTRAINT_UNIQUE" || code === "ER_DUP_ENTRY";
}

/**
 * The history store over Kysely: the same queries for SQLite and MySQL. The
 * database must be migrated (migrateHistory) before use.
 */
export function createSqlHistoryStore(db: Kysely<HistoryDatabase>): HistoryStore {
  const byRequestId = (requestId: string) =>
    db
      .selectFrom("history_entries")
      .select([...columns, "user_key"])
      .where("request_id", "=", requestId)
      .executeTakeFirst();

  return {
    async append(entry: NewEntry): Promise<AppendResult> {
      if (!storableTime(entry.createdAtMs)) {
        throw new HistoryInputError("created_at is out of range");
      }
      if (entry.requestId.length > maxRequestIdLength) {
        throw new HistoryInputError(`request_id is longer than ${maxRequestIdLength} characters`);
      }
      const userKey = userKeyOf(entry.userId);
      try {
        const result = await db
          .insertInto("history_entries")
          .values({
            user_key: userKey,
            user_id: entry.userId,
            request_id: entry.requestId === "" ? null : entry.requestId,
            text: entry.text,
            reply: entry.reply,
            created_at: timeToDb(entry.createdAtMs),
          })
          .executeTakeFirstOrThrow();
        return { entry: { ...entry, id: String(result.insertId) }, created: true };
      } catch (err) {
        // Only a retry of a stored request id lands here; anything else is the database's failure.
        if (entry.requestId === "" || !isUniqueViolation(err)) throw err;
        const existing = await byRequestId(entry.requestId);
        if (existing === undefined) throw err;
        if (existing.user_key !== userKey) {
          throw new RequestIdConflictError("request_id is stored for another user", {
            cause: err,
          });
        }
        return { entry: toEntry(existing), created: false };
      }
    },

    async list(query: ListQuery): Promise<Page> {
      const pageSize = resolvePageSize(query.pageSize);
      const userKey = userKeyOf(query.userId);
      const after = query.pageToken === "" ? undefined : decodePageToken(userKey, query.pageToken);
      let select = db
        .selectFrom("history_entries")
        .select(columns)
        .where("user_key", "=", userKey)
        // A hash collision is not a reason to show someone else's chats.
        .where("user_id", "=", query.userId);
      if (after !== undefined) {
        const at = timeToDb(after.createdAtMs);
        select = select.where((eb) =>
          eb.or([
            eb("created_at", "<", at),
            eb.and([eb("created_at", "=", at), eb("id", "<", after.id)]),
          ]),
        );
      }
      // One row more than the page tells whether there is a next page.
      const rows = await select
        .orderBy("created_at", "desc")
        .orderBy("id", "desc")
        .limit(pageSize + 1)
        .execute();
      const entries = rows.slice(0, pageSize).map(toEntry);
      const last = entries.at(-1);
      const nextPageToken =
        rows.length > pageSize && last !== undefined
          ? encodePageToken(userKey, { createdAtMs: last.createdAtMs, id: Number(last.id) })
          : "";
      return { entries, nextPageToken };
    },

    async ping() {
      await sql`select 1`.execute(db);
    },

    async close() {
      await db.destroy();
    },
  };
}
