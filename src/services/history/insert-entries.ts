import { createHash } from "node:crypto";
import type { Insertable, Kysely } from "kysely";
import type { HistoryDatabase, HistoryEntriesTable } from "./database.js";
import type { NewEntry } from "./history-store.js";
import { timeToDb } from "./time.js";

/** One entry's insert: the id it got, or the error with which the database refused its row. */
export type Inserted = { readonly id: string } | { readonly refusal: unknown };

/** The user_key column: SHA-256 (hex) of the user id. */
export const userKeyOf = (userId: string): string =>
  createHash("sha256").update(userId).digest("hex");

/**
 * Most characters of entries in one multi-row INSERT. At most three UTF-8
 * bytes each, a statement stays under the smallest max_allowed_packet MySQL
 * ships with (4 MiB); a larger entry goes in alone.
 */
const maxStatementChars = 1_000_000;

const rowOf = (entry: NewEntry): Insertable<HistoryEntriesTable> => ({
  user_key: userKeyOf(entry.userId),
  user_id: entry.userId,
  request_id: entry.requestId === "" ? null : entry.requestId,
  text: entry.text,
  reply: entry.reply,
  created_at: timeToDb(entry.createdAtMs),
});

/** A duplicate key, as SQLite (better-sqlite3) and MySQL (mysql2) report it. */
export function isUniqueViolation(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "SQLITE_CONSTRAINT_UNIQUE" || code === "ER_DUP_ENTRY";
}

/**
 * An error about one row's data: a duplicate key, another violated
 * constraint, a value too long. SQLite and InnoDB undo just the failed
 * statement and keep the transaction open.
 */
function isRowRefusal(err: unknown): boolean {
  const { code, sqlState } = (err ?? {}) as { code?: unknown; sqlState?: unknown };
  if (typeof code === "string" && code.startsWith("SQLITE_CONSTRAINT")) return true;
  return typeof sqlState === "string" && (sqlState.startsWith("22") || sqlState.startsWith("23"));
}

/**
 * Inserts entries in order on `db` (a transaction, for more than one): as few
 * multi-row INSERTs as their size allows when all have request ids, row by
 * row otherwise. A row the database refuses is that entry's outcome alone;
 * any other error is thrown.
 */
export async function insertEntries(
  db: Kysely<HistoryDatabase>,
  entries: readonly NewEntry[],
): Promise<Inserted[]> {
  const inserted: Inserted[] = [];
  for (const chunk of statementChunks(entries)) inserted.push(...(await insertChunk(db, chunk)));
  return inserted;
}

function* statementChunks(entries: readonly NewEntry[]): Generator<NewEntry[]> {
  let chunk: NewEntry[] = [];
  let chars = 0;
  for (const entry of entries) {
    const size = entry.userId.length + entry.text.length + entry.reply.length;
    if (chunk.length > 0 && chars + size > maxStatementChars) {
      yield chunk;
      chunk = [];
      chars = 0;
    }
    chunk.push(entry);
    chars += size;
  }
  if (chunk.length > 0) yield chunk;
}

/**
 * One multi-row INSERT, the ids read back by request id. If the database
 * refuses a row (a retried request id, say), the statement is undone as a
 * whole and the entries go in one by one.
 */
async function insertChunk(
  db: Kysely<HistoryDatabase>,
  chunk: readonly NewEntry[],
): Promise<Inserted[]> {
  // Rows without a request id could not be told apart when reading the ids back.
  if (chunk.length === 1 || chunk.some((entry) => entry.requestId === "")) {
    return insertEach(db, chunk);
  }
  try {
    await db.insertInto("history_entries").values(chunk.map(rowOf)).execute();
  } catch (err) {
    if (isRowRefusal(err)) return insertEach(db, chunk);
    throw err;
  }
  const rows = await db
    .selectFrom("history_entries")
    .select(["id", "request_id"])
    .where(
      "request_id",
      "in",
      chunk.map((entry) => entry.requestId),
    )
    .execute();
  const ids = new Map(rows.map((row) => [row.request_id, String(row.id)]));
  // The INSERT stored every request id of the chunk, so each has its row.
  return chunk.map((entry) => ({ id: ids.get(entry.requestId) as string }));
}

async function insertEach(
  db: Kysely<HistoryDatabase>,
  entries: readonly NewEntry[],
): Promise<Inserted[]> {
  const inserted: Inserted[] = [];
  for (const entry of entries) {
    try {
      const result = await db
        .insertInto("history_entries")
        .values(rowOf(entry))
        .executeTakeFirstOrThrow();
      inserted.push({ id: String(result.insertId) });
    } catch (err) {
      if (!isRowRefusal(err)) throw err;
      inserted.push({ refusal: err });
    }
  }
  return inserted;
}
