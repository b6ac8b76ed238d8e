import { HistoryInputError } from "./history-store.js";
import { storableTime } from "./time.js";

/** Where a page ends: the last entry's time and id, for keyset paging. */
export interface Cursor {
  /** Milliseconds since the epoch. */
  readonly createdAtMs: number;
  readonly id: number;
}

interface TokenBody {
  readonly v: 1;
  /** Binds the token to one user (a prefix of the user's key), so it cannot be replayed for another. */
  readonly u: string;
  readonly t: number;
  readonly i: number;
}

const tokenShape = /^[A-Za-z0-9_-]{1,256}$/;
const userBinding = (userKey: string) => userKey.slice(0, 16);

/** Encodes a cursor as an opaque page token (base64url of a small JSON). */
export function encodePageToken(userKey: string, cursor: Cursor): string {
  const body: TokenBody = { v: 1, u: userBinding(userKey), t: cursor.createdAtMs, i: cursor.id };
  return Buffer.from(JSON.stringify(body)).toString("base64url");
}

/**
 * Decodes a page token this store issued for `userKey`. Anything else — not
 * base64url, not the exact JSON shape, another user's, out of range — is a
 * HistoryInputError, never a partial cursor.
 */
export function decodePageToken(userKey: string, token: string): Cursor {
  const invalid = () => new HistoryInputError("invalid page_token");
  if (!tokenShape.test(token)) throw invalid();
  const bytes = Buffer.from(token, "base64url");
  // Non-canonical encodings (stray padding bits) are tampering too.
  if (bytes.toString("base64url") !== token) throw invalid();
  let body: unknown;
  try {
    body = JSON.parse(bytes.toString("utf8"));
  } catch {
    throw invalid();
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw invalid();
  const { v, u, t, i, ...rest } = body as Record<string, unknown>;
  if (
    Object.keys(rest).length > 0 ||
    v !== 1 ||
    u !== userBinding(userKey) ||
    !isCount(t) ||
    !storableTime(t) ||
    !isCount(i) ||
    i === 0
  ) {
    throw invalid();
  }
  return { createdAtMs: t, id: i };
}

const isCount = (value: unknown): value is number =>
  typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
