import { type Kysely, type Selectable, sql } from "kysely";
import type { HistoryDatabase, HistoryEntriesTable } from "./database.js";
import { createGroupCommit } from "./group-commit.js";
import {
  type AppendResult,
  type Entry,
  entryBytes,
  HistoryInputError,
  type HistoryStore,
  type ListQuery,
  maxPageBytes,
  maxRequestIdLength,
  type NewEntry,
  type Page,
  RequestIdConflictError,
  resolvePageSize,
} from "./history-store.js";
import { type Inserted, insertEntries, isUniqueViolation, userKeyOf } from "./insert-entries.js";
import { decodePageToken, encodePageToken } from "./page-token.js";
import { storableTime, timeFromDb, timeToDb } from "./time.js";

const columns = ["id", "user_id", "request_id", "text", "reply", "created_at"] as const;
type Row = Pick<Selectable<HistoryEntriesTable>, (typeof columns)[number]>;
type StoredRow = Row & Pick<Selectable<HistoryEntriesTable>, "user_key">;

const toEntry = (row: Row): Entry => ({
  id: String(row.id),
  userId: row.user_id,
  requestId: row.request_id ?? "",
  text: row.text,
  reply: row.reply,
  createdAtMs: timeFromDb(row.created_at),
});

/** Most entries written in one transaction. */
const maxBatchSize = 256;

/** Refused because its request id is stored already: answered from the stored row. */
const isRetry = (entry: NewEntry, inserted: Inserted): boolean =>
  "refusal" in inserted && entry.requestId !== "" && isUniqueViolation(inserted.refusal);

function checkInput(entry: NewEntry): void {
  if (!storableTime(entry.createdAtMs)) {
    throw new HistoryInputError("created_at is out of range");
  }
  if (entry.requestId.length > maxRequestIdLength) {
    throw new HistoryInputError(`request_id is longer than ${maxRequestIdLength} characters`);
  }
  // MySQL's utf8mb4_bin pads: its unique index holds "r " and "r" as one id,
  // and the row stored under the other could not be read back by its id.
  if (entry.requestId.endsWith(" ")) throw new HistoryInputError("request_id ends with a space");
}

/**
 * The history store over Kysely: the same queries for SQLite and MySQL. The
 * database must be migrated (migrateHistory) before use. Appends are group
 * committed (group-commit.ts): those that arrive while a batch is being
 * written go into the next one, a single transaction, so a busy store syncs
 * once per batch rather than once per chat. Every caller still hears only
 * after its entry committed.
 */
/** InnoDB's deadlock: it rolled the whole transaction back, to be run again. */
const isDeadlock = (err: unknown) =>
  (err as { code?: unknown } | null)?.code === "ER_LOCK_DEADLOCK";

/**
 * Runs `write` again (up to 3 times in all) when InnoDB chose it as a
 * deadlock's victim: two replicas appending the same request ids (a retry
 * that reached both) in other orders lock their unique keys crosswise.
 */
async function retriedOnDeadlock<T>(write: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await write();
    } catch (err) {
      if (!isDeadlock(err) || attempt === 3) throw err;
    }
  }
}

export function createSqlHistoryStore(db: Kysely<HistoryDatabase>): HistoryStore {
  /** The stored rows of these request ids, read after the batch committed. */
  async function byRequestIds(requestIds: readonly string[]) {
    if (requestIds.length === 0) return new Map<string, StoredRow>();
    const rows = await db
      .selectFrom("history_entries")
      .select([...columns, "user_key"])
      .where("request_id", "in", [...new Set(requestIds)])
      .execute();
    return new Map(rows.map((row) => [row.request_id ?? "", row]));
  }

  /** What one caller hears about its entry of a committed batch. */
  async function resultOf(
    entry: NewEntry,
    inserted: Inserted,
    stored: Promise<Map<string, StoredRow>>,
  ): Promise<AppendResult> {
    if ("id" in inserted) return { entry: { ...entry, id: inserted.id }, created: true };
    if (!isRetry(entry, inserted)) throw inserted.refusal;
    const existing = (await stored).get(entry.requestId);
    if (existing === undefined) throw inserted.refusal;
    if (existing.user_key !== userKeyOf(entry.userId)) {
      throw new RequestIdConflictError("request_id is stored for another user", {
        cause: inserted.refusal,
      });
    }
    return { entry: toEntry(existing), created: false };
  }

  /** Writes a batch, more than one entry in one transaction, and answers each entry. */
  async function writeBatch(batch: readonly NewEntry[]) {
    const inserted = await retriedOnDeadlock(() =>
      batch.length === 1
        ? insertEntries(db, batch)
        : db.transaction().execute((trx) => insertEntries(trx, batch)),
    );
    const retries = batch.filter((entry, i) => isRetry(entry, inserted[i] as Inserted));
    const stored = byRequestIds(retries.map((entry) => entry.requestId));
    return Promise.allSettled(
      batch.map((entry, i) => resultOf(entry, inserted[i] as Inserted, stored)),
    );
  }

  const appends = createGroupCommit(writeBatch, maxBatchSize);

  return {
    async append(entry: NewEntry, deadline?: number): Promise<AppendResult> {
      checkInput(entry);
      return appends.submit(entry, deadline);
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
      const entries: Entry[] = [];
      let bytes = 0;
      for (const row of rows.slice(0, pageSize)) {
        const entry = toEntry(row);
        bytes += entryBytes(entry);
        if (bytes > maxPageBytes && entries.length > 0) break;
        entries.push(entry);
      }
      const last = entries.at(-1);
      const nextPageToken =
        rows.length > entries.length && last !== undefined
          ? encodePageToken(userKey, { createdAtMs: last.createdAtMs, id: Number(last.id) })
          : "";
      return { entries, nextPageToken };
    },

    async ping() {
      await sql`select 1`.execute(db);
    },

    async close() {
      await appends.drain();
      await db.destroy();
    },
  };
}
