import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import {
  type Generated,
  Kysely,
  MysqlDialect,
  type MysqlPool,
  type MysqlPoolConnection,
  SqliteDialect,
} from "kysely";
import { ConfigError, type DatabaseUrl } from "../../lib/config.js";
import { urlHostAddress } from "../../lib/local-host.js";
import { redactUrl } from "../../lib/redact-url.js";
import { readCaFile } from "../../lib/tls.js";

/** The history table as Kysely sees it. */
export interface HistoryEntriesTable {
  /** A number from SQLite, a decimal string from MySQL (BIGINT). */
  id: Generated<number | string>;
  /** SHA-256 (hex) of user_id: a fixed-width index key for ids of any length. */
  user_key: string;
  user_id: string;
  request_id: string | null;
  text: string;
  reply: string;
  /** See time.ts. */
  created_at: string;
}

export interface HistoryDatabase {
  history_entries: HistoryEntriesTable;
}

export type Dialect = DatabaseUrl["dialect"];

/** An open history database and its dialect (the migrations pick column types by it). */
export interface OpenDatabase {
  readonly db: Kysely<HistoryDatabase>;
  readonly dialect: Dialect;
}

/** PRAGMA cache_size of the SQLite history: negative, so in KiB (2 MiB). */
export const sqliteCacheSize = -2000;

/**
 * PRAGMA wal_autocheckpoint of the SQLite history, in pages (~40 MB of WAL
 * at 4 KiB a page). At SQLite's default of 1,000 a busy history checkpointed
 * after every few group commits, each time copying pages back into the
 * database file and syncing it; a page written by many commits between two
 * checkpoints is copied once. Under `make bench` (three alternating rounds):
 * ~11 % less history CPU per chat and ~6 % more chats/s, for a WAL file of
 * up to ~40 MB on disk and a longer (rarer) checkpoint. A checkpoint blocks
 * the thread it runs on: where the history shares the thread that serves
 * chats (`chatmesh all`), it keeps SQLite's default instead.
 */
export const sqliteWalAutocheckpoint = 10_000;

/**
 * PRAGMA wal_autocheckpoint where the history runs on the gateway's thread
 * (`chatmesh all`): SQLite's default. With 10,000 pages the p99 of
 * `chatmesh all` under `make bench` went from 21-22 to 42-45 ms.
 */
export const sharedThreadWalAutocheckpoint = 1_000;

/**
 * Longest a MySQL query may go without an answer. A batch of 256 appends
 * takes milliseconds; a query that hears nothing for this long is on a
 * connection gone silent (a partition, a failover behind the same address),
 * which the kernel would give up on only after ~15 minutes. Appends are
 * written one batch at a time, so one such query held up every later one.
 */
export const mysqlQueryTimeoutMs = 5_000;

export interface OpenDatabaseOptions {
  /** PRAGMA wal_autocheckpoint of a SQLite file: `sqliteWalAutocheckpoint` unless given. */
  readonly walAutocheckpoint?: number;
  /** Longest a MySQL query may go without an answer: `mysqlQueryTimeoutMs` unless given. */
  readonly queryTimeoutMs?: number;
}

/**
 * Opens the database a HISTORY_DATABASE_URL names. SQLite files get their
 * directory created and run in WAL mode (a killed process loses no committed
 * chat); MySQL gets a pool that speaks utf8mb4 and hands times back as
 * text, over TLS when the URL's `ssl-mode` asks for it.
 * Nothing is queried until the first use. A SQLite file that cannot be
 * opened is a ConfigError naming HISTORY_DATABASE_URL. Only the driver of the URL's
 * dialect is loaded (mysql2 alone is about 16 MB of RSS).
 */
/**
 * Puts a SQLite file in WAL mode. On a new file that another process holds
 * locked (a replica starting at the same time, creating it), the switch
 * fails at once with SQLITE_BUSY, whatever the busy timeout: it is tried
 * again for up to 5 s, as the busy timeout would wait.
 */
async function switchToWal(sqlite: { pragma(source: string): unknown }): Promise<void> {
  const until = Date.now() + 5_000;
  for (;;) {
    try {
      sqlite.pragma("journal_mode = WAL");
      return;
    } catch (err) {
      if ((err as { code?: unknown }).code !== "SQLITE_BUSY" || Date.now() > until) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/**
 * Fails as a write does on a file this process may only read (another
 * user's, or on a read-only mount). SQLite opens such a file without a word,
 * and its switch to WAL writes nothing once it is in WAL, so the history
 * started, said it was ready, and failed every append. The probe is rolled
 * back: the file is left as it was.
 */
function requireWritable(sqlite: {
  pragma(source: string, options?: { simple: boolean }): unknown;
  exec(source: string): unknown;
}): void {
  const version = Number(sqlite.pragma("user_version", { simple: true }));
  sqlite.exec("begin");
  try {
    sqlite.pragma(`user_version = ${version}`);
  } finally {
    sqlite.exec("rollback");
  }
}

export async function openHistoryDatabase(
  url: DatabaseUrl,
  options: OpenDatabaseOptions = {},
): Promise<OpenDatabase> {
  if (url.dialect === "sqlite") {
    const { default: Database } = await import("better-sqlite3");
    let sqlite: InstanceType<typeof Database> | undefined;
    try {
      if (url.path !== ":memory:") mkdirSync(dirname(url.path), { recursive: true });
      sqlite = new Database(url.path);
      sqlite.pragma("busy_timeout = 5000");
      await switchToWal(sqlite);
      // SQLite's own default page cache, 2 MiB: better-sqlite3 builds with 16 MiB,
      // which under `make bench` held ~18 MB more RSS for no measurable speed
      // (the file's pages stay in the OS's cache).
      sqlite.pragma(`cache_size = ${sqliteCacheSize}`);
      sqlite.pragma(`wal_autocheckpoint = ${options.walAutocheckpoint ?? sqliteWalAutocheckpoint}`);
      requireWritable(sqlite);
    } catch (err) {
      sqlite?.close();
      throw unusableDatabase(url, err);
    }
    return {
      db: new Kysely({ dialect: new SqliteDialect({ database: sqlite }) }),
      dialect: "sqlite",
    };
  }
  const parsed = new URL(url.url);
  const tls = url.tls;
  const ca =
    tls?.caFile === undefined
      ? {}
      : { ca: await readCaFile(tls.caFile, "HISTORY_DATABASE_URL's ssl-ca") };
  const ssl =
    tls === undefined
      ? {}
      : {
          ssl: {
            rejectUnauthorized: tls.verify !== "none",
            verifyIdentity: tls.verify === "identity",
            ...ca,
          },
        };
  // mysql2 is CommonJS: its exports are the default export of the module
  // (Node also names them, esbuild's bundle does not).
  const { createPool } = (await import("mysql2")).default;
  const pool = createPool({
    host: decodeURIComponent(urlHostAddress(parsed)),
    port: parsed.port === "" ? 3306 : Number(parsed.port),
    user: decodeURIComponent(parsed.username),
    password: decodeURIComponent(parsed.password),
    database: decodeURIComponent(parsed.pathname.slice(1)),
    charset: "UTF8MB4_BIN",
    // DATETIME(3) as text, in the format time.ts reads; no time-zone shifts.
    dateStrings: true,
    supportBigNumbers: true,
    bigNumberStrings: true,
    connectionLimit: 10,
    connectTimeout: 5_000,
    ...ssl,
  });
  const dialect = new MysqlDialect({
    pool: withQueryTimeout(pool, options.queryTimeoutMs ?? mysqlQueryTimeoutMs),
  });
  return { db: new Kysely({ dialect }), dialect: "mysql" };
}

type Mysql2Pool = ReturnType<typeof import("mysql2").createPool>;
type Mysql2Connection = Parameters<Parameters<Mysql2Pool["getConnection"]>[0]>[1];

/**
 * `pool` for Kysely, every query of it failing after `timeoutMs` without an
 * answer. The connection it ran on is then destroyed, not given back: its
 * socket may be silent for good, and a query queued behind the late one on
 * it would wait too. The next query gets a new connection.
 */
function withQueryTimeout(pool: Mysql2Pool, timeoutMs: number): MysqlPool {
  const wrapped = new WeakMap<Mysql2Connection, MysqlPoolConnection>();
  const wrap = (connection: Mysql2Connection): MysqlPoolConnection => ({
    query: ((sql: string, values: unknown[], callback?: (err: unknown, result: never) => void) => {
      if (callback === undefined) return connection.query(sql, values);
      connection.query({ sql, values, timeout: timeoutMs }, (err, result) => {
        if ((err as { code?: unknown } | null)?.code === "PROTOCOL_SEQUENCE_TIMEOUT") {
          connection.destroy();
        }
        callback(err, result as never);
      });
      return undefined;
    }) as MysqlPoolConnection["query"],
    release: () => connection.release(),
  });
  return {
    getConnection(callback) {
      pool.getConnection((err, connection) => {
        if (err) return callback(err, undefined as never);
        let connectionOf = wrapped.get(connection);
        if (connectionOf === undefined) {
          connectionOf = wrap(connection);
          wrapped.set(connection, connectionOf);
        }
        callback(null, connectionOf);
      });
    },
    end: (callback) => pool.end(callback),
  };
}

/** What went wrong, in one line: a driver's message, or its code where it has none. */
function reasonOf(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  // Node's connect errors for a name of several addresses carry no message of their own.
  const message =
    err.message !== ""
      ? err.message
      : err instanceof AggregateError
        ? err.errors.map(reasonOf).join("; ")
        : ((err as NodeJS.ErrnoException).code ?? err.name);
  return message.replace(/\s+/g, " ").trim();
}

/**
 * The one line a database that cannot be opened or reached stops the
 * process with: no such directory, not a database, refused connection, bad
 * credentials, unknown database. The URL is shown without its password.
 */
export function unusableDatabase(url: DatabaseUrl, err: unknown): ConfigError {
  return new ConfigError(
    `HISTORY_DATABASE_URL must name a database this process can open, got "${redactDatabaseUrl(url)}" (${reasonOf(err)})`,
  );
}

/** Hides the password of a database URL, for logs and messages. */
export function redactDatabaseUrl(url: DatabaseUrl): string {
  return url.dialect === "sqlite" ? `sqlite:${url.path}` : redactUrl(url.url);
}
