import { createHash, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { ConfigError } from "../lib/config.js";
import type { Logger } from "../lib/logger.js";
import { maxUserIdChars, userIdTooLong } from "../lib/user-id.js";
import { fileStamp, type WatchedFile, watchFile } from "../lib/watched-file.js";

declare module "fastify" {
  interface FastifyRequest {
    /** The user of the request's API key; undefined when no keys are configured. */
    apiUser: string | undefined;
  }
}

/** The API keys of API_KEYS_FILE: who each key belongs to. */
export interface ApiKeys {
  /** The number of keys. */
  readonly size: number;
  /**
   * The user of `key`, or undefined. Takes the same time whichever key (if
   * any) matches: every stored key is compared, in constant time, against
   * the SHA-256 of `key` (hashing first makes the lengths equal).
   */
  userOf(key: string): string | undefined;
}

const sha256 = (value: string) => createHash("sha256").update(value).digest();

/** Keys shorter than this are refused: they could be guessed. */
export const minKeyLength = 16;

const printableAscii = /^[\x21-\x7e]+$/;

/** Makes the key set of `[key, user]` pairs. */
export function createApiKeys(entries: Iterable<readonly [string, string]>): ApiKeys {
  const stored = [...entries].map(([key, user]) => ({ hash: sha256(key), user }));
  return {
    size: stored.length,
    userOf(key) {
      const hash = sha256(key);
      let found: string | undefined;
      for (const entry of stored) {
        // No early exit: the time does not tell which key matched.
        if (timingSafeEqual(hash, entry.hash) && found === undefined) found = entry.user;
      }
      return found;
    },
  };
}

/**
 * Parses API_KEYS_FILE: one `key user_id` per line (white space between),
 * `#` starts a comment line, blank lines are skipped. A malformed line, a
 * short key or a key given twice is a ConfigError naming the line.
 */
export function parseApiKeys(content: string): Array<[string, string]> {
  const entries: Array<[string, string]> = [];
  const seen = new Set<string>();
  content.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const where = `API_KEYS_FILE line ${index + 1}`;
    const fields = line.split(/\s+/);
    const [key, user] = fields;
    if (fields.length !== 2 || key === undefined || user === undefined) {
      throw new ConfigError(`${where} must be "<key> <user_id>"`);
    }
    if (key.length < minKeyLength) {
      throw new ConfigError(`${where}: a key must have at least ${minKeyLength} characters`);
    }
    // Header values reach Node as Latin-1: a key with other characters sent
    // in UTF-8 would never match, and its user could never be let in.
    if (!printableAscii.test(key)) {
      throw new ConfigError(`${where}: a key must be printable ASCII characters only`);
    }
    // The routes refuse a longer user id: the key's user could do nothing.
    if (userIdTooLong(user)) {
      throw new ConfigError(`${where}: a user id must have at most ${maxUserIdChars} characters`);
    }
    if (seen.has(key)) throw new ConfigError(`${where}: the key is given twice`);
    seen.add(key);
    entries.push([key, user]);
  });
  if (entries.length === 0) throw new ConfigError("API_KEYS_FILE must hold at least one key");
  return entries;
}

/** Reads API_KEYS_FILE; an unreadable or malformed file is a configuration error. */
export async function loadApiKeys(path: string): Promise<ApiKeys> {
  let content: string;
  try {
    content = await readFile(path, "utf8");
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ConfigError(`API_KEYS_FILE must name a readable file, got "${path}" (${reason})`);
  }
  return createApiKeys(parseApiKeys(content));
}

/**
 * The keys of API_KEYS_FILE, read again without a restart on SIGHUP and when
 * the file changes (`watchFile`): keys are added, rotated and revoked for
 * every request after the read. A file that is unreadable or malformed then
 * (one being written, say) is logged, and the keys read before it stay.
 */
export async function loadReloadableApiKeys(
  path: string,
  logger: Logger,
): Promise<ApiKeys & WatchedFile> {
  const stamp = await fileStamp(path);
  let current = await loadApiKeys(path);
  const file = watchFile(path, {
    stamp,
    what: "API_KEYS_FILE",
    notReloaded: "API keys not reloaded; the previous keys stay",
    logger,
    async read() {
      current = await loadApiKeys(path);
      logger.info({ keys: current.size, file: path }, "API keys reloaded");
    },
  });
  return {
    get size() {
      return current.size;
    },
    userOf: (key) => current.userOf(key),
    reload: file.reload,
    close: file.close,
  };
}

/** The key of an `Authorization: Bearer <key>` header. */
export function bearerKey(header: string | undefined): string | undefined {
  const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header ?? "");
  return match?.[1];
}

export interface ApiKeyAuthOptions {
  /** Paths anyone may call without a key (health checks, metrics). */
  readonly publicPaths: ReadonlySet<string>;
}

const isPublic = (req: FastifyRequest, paths: ReadonlySet<string>) =>
  paths.has(req.url.split("?", 1)[0] ?? "");

/**
 * Requires a valid API key on every request but the public paths: without
 * one the answer is 401 `{"error":"invalid api key"}`. The user is the key's:
 * a `user_id` in the JSON body or the query that names someone else is
 * refused with 400, and one left out is filled in, so the routes read the
 * user as usual and nobody spends or reads another user's quota or history.
 */
export function registerApiKeyAuth(
  app: FastifyInstance,
  keys: ApiKeys,
  options: ApiKeyAuthOptions,
): void {
  app.decorateRequest("apiUser", undefined);
  app.addHook("onRequest", (req, _reply, done) => {
    const key = bearerKey(req.headers.authorization);
    if (key !== undefined) req.apiUser = keys.userOf(key);
    done();
  });
  // Refused one step later than the key is read: a rate limit (a route's
  // onRequest hook, which runs after the app's) counts a request without a
  // valid key against its address first, so keys cannot be guessed at full speed.
  app.addHook("preParsing", async (req, reply) => {
    if (req.apiUser !== undefined || isPublic(req, options.publicPaths)) return;
    reply.header("www-authenticate", 'Bearer realm="chatmesh"');
    return reply.code(401).send({ error: "invalid api key" });
  });
  app.addHook("preHandler", async (req, reply) => {
    const user = req.apiUser;
    if (user === undefined) return;
    for (const fields of [req.body, req.query]) {
      if (typeof fields !== "object" || fields === null || Array.isArray(fields)) continue;
      const named = fields as Record<string, unknown>;
      if (!("user_id" in named)) {
        named.user_id = user;
      } else if (
        typeof named.user_id === "string" &&
        named.user_id !== "" &&
        named.user_id !== user
      ) {
        // One empty or no string is the route's to refuse, in the contract's words.
        return reply.code(400).send({ error: "user_id does not match the api key" });
      }
    }
  });
}
