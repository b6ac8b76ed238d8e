/** A chat to store. */
export interface NewEntry {
  readonly userId: string;
  readonly text: string;
  readonly reply: string;
  /** Milliseconds since the epoch. */
  readonly createdAtMs: number;
  /** Non-empty: at most one entry is ever stored under it. */
  readonly requestId: string;
}

/** A stored chat. */
export interface Entry extends NewEntry {
  /** Decimal digits, assigned by the store, increasing in insertion order. */
  readonly id: string;
}

export interface AppendResult {
  readonly entry: Entry;
  /** False when the request id was stored already: nothing new was stored. */
  readonly created: boolean;
}

export interface ListQuery {
  readonly userId: string;
  /** AIP-158: 0 means the default (20), above the maximum (100) means the maximum. */
  readonly pageSize: number;
  /** Empty for the first page. */
  readonly pageToken: string;
}

export interface Page {
  /** Newest first. */
  readonly entries: readonly Entry[];
  /** Empty on the last page. */
  readonly nextPageToken: string;
}

/**
 * Where chats are kept. Every implementation pages by keyset (created_at, id)
 * descending, so a page never repeats or skips an entry while new ones arrive,
 * and only ever reads the asking user's entries.
 */
export interface HistoryStore {
  /**
   * Stores `entry`. With a `deadline` (a `performance.now()` time), a store
   * that queues writes may fail it with ExpiredWaitingError instead, if the
   * deadline passes while it waits its turn.
   */
  append(entry: NewEntry, deadline?: number): Promise<AppendResult>;
  list(query: ListQuery): Promise<Page>;
  /** Resolves when the database answers. */
  ping(): Promise<void>;
  /** Finishes the appends under way, then closes the database. */
  close(): Promise<void>;
}

/** The caller's mistake (bad page token, page size, time, request id): INVALID_ARGUMENT. */
export class HistoryInputError extends Error {
  override name = "HistoryInputError";
}

/** The request id is stored already for another user: ALREADY_EXISTS. */
export class RequestIdConflictError extends Error {
  override name = "RequestIdConflictError";
}

export const defaultPageSize = 20;
export const maxPageSize = 100;
/**
 * Most bytes of chats in a page (text, reply and ids, in UTF-8). The
 * gateway's lean frames take answers up to 4 MiB, and 100 chats of 8,000
 * CJK characters with their echoes make ~4.8 MB: such a page ends sooner,
 * its next_page_token going on from there. A page holds at least one chat,
 * however long.
 */
export const maxPageBytes = 3 * 1024 * 1024;

/** What an entry weighs in a page, about as it is encoded. */
export function entryBytes(entry: Entry): number {
  return (
    Buffer.byteLength(entry.text) +
    Buffer.byteLength(entry.reply) +
    Buffer.byteLength(entry.userId) +
    entry.requestId.length +
    32
  );
}
/** Longest request id, in characters (the column's width). */
export const maxRequestIdLength = 128;

/** Applies AIP-158's page_size rules. */
export function resolvePageSize(pageSize: number): number {
  if (!Number.isSafeInteger(pageSize) || pageSize < 0) {
    throw new HistoryInputError("page_size must not be negative");
  }
  if (pageSize === 0) return defaultPageSize;
  return Math.min(pageSize, maxPageSize);
}
