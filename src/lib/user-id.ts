import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Most characters (Unicode code points) of a user id, in every process. A
 * quota key and a history row hold it, and GET /history and GET /quota carry
 * it in their URL, whose head Node caps at 16 KiB (a character takes up to 12
 * bytes there, percent-encoded): a longer id could chat, but never read its
 * history back. MySQL's TEXT column holds 65,535 bytes.
 */
export const maxUserIdChars = 256;

/** Whether `text` has more than `max` code points (a surrogate pair is one). */
export function codePointsOver(text: string, max: number): boolean {
  // UTF-16 length bounds the code point count from above: most texts need no count.
  if (text.length <= max) return false;
  let count = 0;
  for (const _ of text) {
    if (++count > max) return true;
  }
  return false;
}

/** Whether a user id is over `maxUserIdChars`. */
export const userIdTooLong = (userId: string): boolean => codePointsOver(userId, maxUserIdChars);

/**
 * The services' check of an id that is a store key (user_id, charge_id):
 * INVALID_ARGUMENT when empty (where `required`) or longer than
 * `maxUserIdChars`.
 */
export function requireKeyField(field: string, value: string, required = true): void {
  if (required && value === "")
    throw new ConnectError(`${field} is required`, Code.InvalidArgument);
  if (codePointsOver(value, maxUserIdChars)) {
    throw new ConnectError(
      `${field} is longer than ${maxUserIdChars} characters`,
      Code.InvalidArgument,
    );
  }
}

/** The services' check of a request's user id: INVALID_ARGUMENT when empty or too long. */
export const requireUserId = (userId: string): void => requireKeyField("user_id", userId);
