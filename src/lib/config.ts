/**
 * The one place that reads `process.env`. Each process asks for its own
 * section; every value is validated once, at start-up, and a bad one throws a
 * ConfigError whose message is one line naming the variable and what it
 * expects.
 */

import { isIP } from "node:net";
import { urlHostAddress } from "./local-host.js";
import { redactUrl } from "./redact-url.js";

/** The environment a config is read from (process.env by default). */
export type Env = Readonly<Record<string, string | undefined>>;

/** A bad environment variable; its message is meant to be printed as is. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Where a listener's certificate and private key are (PEM files). */
export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
}

/** Settings every process shares. */
export interface CommonConfig {
  readonly host: string;
  readonly logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  readonly shutdownTimeoutMs: number;
  /**
   * REQUEST_TIMEOUT_MS: most time an HTTP/1.1 client may take to send a
   * request's headers and body; then 408 and the connection is closed.
   */
  readonly requestTimeoutMs: number;
  /** TLS_CERT_FILE and TLS_KEY_FILE: the listener speaks TLS; undefined for cleartext. */
  readonly tls: TlsFiles | undefined;
}

/** Settings of an RPC service process. */
export interface ServiceConfig extends CommonConfig {
  readonly port: number;
  readonly maxRequestBytes: number;
}

export interface FilterConfig extends ServiceConfig {
  /** Path of the banned-terms file, or undefined for the default list. */
  readonly termsFile: string | undefined;
}

export interface TokenConfig extends ServiceConfig {
  readonly quotaLimit: number;
  readonly quotaCost: number;
  readonly quotaStore: "memory" | "redis";
  /** Where the redis quota store connects (REDIS_URL). */
  readonly redisUrl: string;
  /** Let chats through uncharged while the quota store is unavailable (QUOTA_FAIL_OPEN). */
  readonly quotaFailOpen: boolean;
}

/** Where LLM_BACKEND=openai sends its calls: any OpenAI-compatible server. */
export interface OpenAiBackendConfig {
  /** OPENAI_BASE_URL, such as https://api.openai.com/v1 or http://127.0.0.1:11434/v1. */
  readonly baseUrl: string;
  /** OPENAI_API_KEY; empty for local servers that need none (never logged). */
  readonly apiKey: string;
  /** LLM_MODEL, the model the server is asked for. */
  readonly model: string;
}

export interface LlmConfig extends ServiceConfig {
  readonly backend: "echo" | "openai";
  /** Delay before the echo backend answers, to try out deadlines. */
  readonly echoDelayMs: number;
  /** Delay before each streamed piece of the echo backend, so streaming is visible. */
  readonly echoChunkDelayMs: number;
  /** Set when the backend is "openai". */
  readonly openai: OpenAiBackendConfig | undefined;
  /** LLM_TIMEOUT_MS: most time one call to the model server may take, streaming included. */
  readonly timeoutMs: number;
  /** LLM_MAX_TOKENS: most tokens a reply may have; a request may ask for fewer. */
  readonly maxTokens: number;
  /** LLM_MAX_REPLY_BYTES: a longer reply is cut there (UTF-8), ending as "length". */
  readonly maxReplyBytes: number;
}

/** Where the history store lives: an embedded SQLite file or a MySQL/MariaDB server. */
export type DatabaseUrl =
  | { readonly dialect: "sqlite"; readonly path: string }
  | { readonly dialect: "mysql"; readonly url: string; readonly tls?: MysqlTls | undefined };

/**
 * TLS to a MySQL server, from the URL's `ssl-mode` (MySQL's names):
 * `REQUIRED` encrypts without checking the certificate, `VERIFY_CA` checks it
 * against `ssl-ca` (or Node's CAs), `VERIFY_IDENTITY` checks the host name too.
 */
export interface MysqlTls {
  readonly verify: "none" | "ca" | "identity";
  /** PEM file of the CAs to trust; Node's own when undefined. */
  readonly caFile: string | undefined;
}

const sslModes: Readonly<Record<string, MysqlTls["verify"] | undefined>> = {
  DISABLED: undefined,
  REQUIRED: "none",
  VERIFY_CA: "ca",
  VERIFY_IDENTITY: "identity",
};

/**
 * The TLS a mysql:// URL asks for; a parameter it does not know is an error,
 * not ignored. Values are percent-decoded as in a path (`+` stays `+`), and
 * no message shows them but ssl-mode's: a parameter could hold a password.
 */
function readMysqlTls(url: URL, name: string): MysqlTls | undefined {
  const params = new Map<string, string>();
  for (const pair of url.search.slice(1).split("&")) {
    if (pair === "") continue;
    const at = pair.indexOf("=");
    let key: string;
    let value: string;
    try {
      key = decodeURIComponent(at === -1 ? pair : pair.slice(0, at));
      value = at === -1 ? "" : decodeURIComponent(pair.slice(at + 1));
    } catch {
      throw new ConfigError(`${name} has a parameter that is not percent-encoded UTF-8`);
    }
    if (key !== "ssl-mode" && key !== "ssl-ca") {
      throw new ConfigError(
        `${name} has a parameter chatmesh does not know, "${key}" (known: ssl-mode, ssl-ca)`,
      );
    }
    params.set(key, value);
  }
  const mode = (params.get("ssl-mode") ?? "DISABLED").toUpperCase();
  if (!Object.hasOwn(sslModes, mode)) {
    throw new ConfigError(
      `${name}'s ssl-mode must be DISABLED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY, got "${mode}"`,
    );
  }
  const verify = sslModes[mode];
  // The driver (mysql2) checks the name "localhost" for a server given by its
  // address, whatever the address: only a name can be checked.
  if (verify === "identity" && isIP(urlHostAddress(url)) !== 0) {
    throw new ConfigError(
      `${name}'s ssl-mode=VERIFY_IDENTITY needs the server's name, not an IP address (the MySQL driver cannot check an address): use the name in its certificate, or VERIFY_CA`,
    );
  }
  const caFile = params.get("ssl-ca");
  if (caFile !== undefined && (verify === undefined || verify === "none")) {
    throw new ConfigError(`${name}'s ssl-ca needs ssl-mode=VERIFY_CA or VERIFY_IDENTITY`);
  }
  return verify === undefined ? undefined : { verify, caFile: caFile === "" ? undefined : caFile };
}

export interface HistoryConfig extends ServiceConfig {
  readonly database: DatabaseUrl;
}

export interface GatewayConfig extends CommonConfig {
  readonly port: number;
  readonly tokenUrl: string;
  readonly filterUrl: string;
  readonly llmUrl: string;
  readonly historyUrl: string;
  readonly filterTimeoutMs: number;
  readonly tokenTimeoutMs: number;
  readonly llmTimeoutMs: number;
  readonly historyTimeoutMs: number;
  /** How long a failed history append is retried in the background before it is dropped. */
  readonly historyRetryWindowMs: number;
  /** Most failed appends kept for retrying; beyond it the oldest is dropped. */
  readonly historyQueueLimit: number;
  readonly maxBodyBytes: number;
  readonly maxTextChars: number;
  /**
   * How the gateway calls the services: "frames" (unary calls multiplexed
   * over one connection per service in lean frames; cleartext only, TLS
   * upstreams get "connect"), "connect" (binary Connect over pooled
   * HTTP/1.1) or "grpc" (gRPC over HTTP/2).
   */
  readonly upstreamProtocol: "frames" | "connect" | "grpc";
  /**
   * UPSTREAM_MAX_CONNECTION_AGE_MS: new calls go to new connections once a
   * service's are this old (±10 %), so they reach replicas started since;
   * 0 keeps them.
   */
  readonly upstreamMaxConnectionAgeMs: number;
  /**
   * QUOTA_COST_MODE: "fixed" charges the token service's QUOTA_COST per chat;
   * "tokens" reserves an estimate of the chat's tokens and settles to the
   * tokens it used once answered.
   */
  readonly quotaCostMode: "fixed" | "tokens";
  /** QUOTA_REPLY_RESERVE: tokens reserved for a reply before it is known (tokens mode). */
  readonly quotaReplyReserve: number;
  /**
   * STREAM_KEEPALIVE_MS: an event stream with nothing sent for this long
   * (a model thinking before its first piece) gets a comment line, so that
   * proxies' idle timeouts do not cut it; 0 sends none.
   */
  readonly streamKeepAliveMs: number;
  /** Requests per minute per client (RATE_LIMIT_PER_MINUTE); 0 turns the limit off. */
  readonly rateLimitPerMinute: number;
  /** API_KEYS_FILE: `key user_id` lines; when set, every API call needs a key. */
  readonly apiKeysFile: string | undefined;
  /** UPSTREAM_CA_FILE: a PEM CA the gateway trusts for https:// service URLs. */
  readonly upstreamCaFile: string | undefined;
  /**
   * CORS_ORIGINS: the origins whose pages may call the gateway from a
   * browser, or `*` for any; none (the default) keeps it same-origin only.
   */
  readonly corsOrigins: readonly string[];
  /**
   * TRUST_PROXY: the proxies in front of the gateway (addresses, CIDR ranges,
   * or `loopback`, `linklocal`, `uniquelocal`). A request from one of them is
   * taken as from the address its X-Forwarded-For names (the last one not a
   * trusted proxy): the client the rate limit counts. None (the default)
   * ignores X-Forwarded-For, which any client can send.
   */
  readonly trustProxy: readonly string[];
}

/** Default ports of the contract, with the variable that moves each. */
export const defaultPorts = {
  token: { env: "TOKEN_PORT", port: 50051 },
  filter: { env: "FILTER_PORT", port: 50052 },
  history: { env: "HISTORY_PORT", port: 50053 },
  llm: { env: "LLM_PORT", port: 50055 },
  gateway: { env: "GATEWAY_PORT", port: 8080 },
} as const;

const logLevels = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

function readString(env: Env, name: string, fallback: string): string {
  const raw = env[name];
  return raw === undefined || raw === "" ? fallback : raw;
}

function readInt(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!/^-?\d+$/.test(raw.trim()) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got "${raw}"`);
  }
  return value;
}

function readEnum<T extends string>(env: Env, name: string, allowed: readonly T[], fallback: T): T {
  const raw = readString(env, name, fallback);
  const found = allowed.find((a) => a === raw);
  if (found === undefined) {
    throw new ConfigError(`${name} must be one of ${allowed.join(", ")}, got "${raw}"`);
  }
  return found;
}

/**
 * A URL-valued variable, trimmed of surrounding white space as LLM_MODEL and
 * OPENAI_API_KEY are (blank means unset): the URL parser ignores it, the
 * value used afterwards would not.
 * Error lines show it through `shownUrl`, so a password never reaches the
 * terminal, however malformed the URL is.
 */
function readUrlString(env: Env, name: string, fallback: string): string {
  const raw = (env[name] ?? "").trim();
  return raw === "" ? fallback : raw;
}

/** A URL as error lines quote it: its password masked. */
function shownUrl(raw: string): string {
  return `"${redactUrl(raw)}"`;
}

function readHttpUrl(env: Env, name: string, fallback: string): string {
  const raw = readUrlString(env, name, fallback);
  const expected = `${name} must be an http:// or https:// URL, got ${shownUrl(raw)}`;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(expected);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new ConfigError(expected);
  return raw.replace(/\/+$/, "");
}

/**
 * A service's URL (TOKEN_URL…): scheme, host and port only. The transports
 * would use a path differently (frames ignores it, Connect and gRPC put
 * it before every method's), so one is refused rather than half followed.
 */
function readServiceUrl(env: Env, name: string, fallback: string): string {
  const raw = readHttpUrl(env, name, fallback);
  const url = new URL(raw);
  // An empty query or fragment ("host:port?") parses as none, but stays in the value.
  if (url.pathname !== "/" || /[?#]/.test(raw)) {
    throw new ConfigError(
      `${name} must be http(s)://host:port with no path, query or fragment, got ${shownUrl(raw)}`,
    );
  }
  return raw;
}

/** Throws when a URL's user or password is not percent-encoded (a bare `%`): the clients would throw URIError. */
function requireEncodedCredentials(url: URL, name: string, raw: string): void {
  try {
    decodeURIComponent(url.username);
    decodeURIComponent(url.password);
  } catch {
    throw new ConfigError(
      `${name}'s user and password must be percent-encoded (% as %25), got ${shownUrl(raw)}`,
    );
  }
}

function readBool(env: Env, name: string, fallback: boolean): boolean {
  return readEnum(env, name, ["true", "false"] as const, fallback ? "true" : "false") === "true";
}

function readRedisUrl(env: Env, name: string, fallback: string): string {
  const raw = readUrlString(env, name, fallback);
  let url: URL | undefined;
  try {
    url = new URL(raw);
  } catch {
    // not a URL at all: reported below
  }
  if (!url || (url.protocol !== "redis:" && url.protocol !== "rediss:") || url.hostname === "") {
    throw new ConfigError(`${name} must be a redis:// or rediss:// URL, got ${shownUrl(raw)}`);
  }
  requireEncodedCredentials(url, name, raw);
  // ioredis takes client options from the query (?db=abc crashes it, and
  // others would undo the store's fail-fast settings).
  if (url.search !== "" || url.hash !== "") {
    throw new ConfigError(
      `${name} takes no query or fragment: the database goes in the path (/1), the password before the host (redis://:password@host:6379), got ${shownUrl(raw)}`,
    );
  }
  // The client would send SELECT NaN for a database that is not a number, and crash.
  if (!/^\/?(\d{1,9})?$/.test(url.pathname)) {
    throw new ConfigError(
      `${name}'s database (after the port) must be a number such as /0, got ${shownUrl(raw)}`,
    );
  }
  return raw;
}

function readDatabaseUrl(env: Env, name: string, fallback: string): DatabaseUrl {
  const raw = readUrlString(env, name, fallback);
  const expected = `${name} must be sqlite:<file> or mysql://user:pass@host:3306/db, got ${shownUrl(raw)}`;
  if (raw.startsWith("sqlite:")) {
    // sqlite:///abs/file.db and sqlite://./file.db mean the same as sqlite:/abs/file.db.
    const path = raw.slice("sqlite:".length).replace(/^\/\//, "");
    if (path === "") throw new ConfigError(expected);
    // SQLite's URI parameters (?mode=ro, ?cache=shared) would not be applied:
    // they would name a new, empty file instead of the one meant.
    if (path.includes("?")) {
      throw new ConfigError(
        `${name}'s sqlite: file takes no parameters (nothing after "?"), got ${shownUrl(raw)}`,
      );
    }
    return { dialect: "sqlite", path };
  }
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(expected);
  }
  if (url.protocol !== "mysql:" || url.hostname === "" || url.pathname.replace(/^\//, "") === "") {
    throw new ConfigError(expected);
  }
  requireEncodedCredentials(url, name, raw);
  return { dialect: "mysql", url: raw, tls: readMysqlTls(url, name) };
}

/**
 * 0 (keep connections) or at least a second: each renewal opens connections,
 * and the old ones stay open until idle for a while.
 */
function readConnectionAge(env: Env, name: string): number {
  const ms = readInt(env, name, 60_000, 0, 86_400_000);
  if (ms > 0 && ms < 1_000) {
    throw new ConfigError(
      `${name} must be 0 (keep connections) or from 1000 to 86400000, got "${ms}"`,
    );
  }
  return ms;
}

function readOptionalPath(env: Env, name: string): string | undefined {
  const raw = env[name];
  return raw === undefined || raw.trim() === "" ? undefined : raw;
}

/**
 * `*`, or origins separated by commas or white space, each written as a
 * browser sends it in `Origin` (scheme, host, port unless the default, in
 * lower case): one written otherwise (a path, a trailing slash, upper case)
 * would never match, so it is refused.
 */
function readOrigins(env: Env, name: string): readonly string[] {
  const raw = (env[name] ?? "").trim();
  if (raw === "") return Object.freeze([]);
  if (raw === "*") return Object.freeze(["*"]);
  const origins = raw.split(/[\s,]+/).filter((origin) => origin !== "");
  for (const origin of origins) {
    let url: URL | undefined;
    try {
      url = new URL(origin);
    } catch {}
    if (url?.origin !== origin || (url.protocol !== "http:" && url.protocol !== "https:")) {
      throw new ConfigError(
        `${name} must be * or origins such as https://app.example.com (scheme, host and port as a browser sends them: no path, no trailing /), got "${origin}"`,
      );
    }
  }
  return Object.freeze(origins);
}

/** proxy-addr's names for ranges of addresses, as Express's `trust proxy` takes them. */
const proxyRangeNames = new Set(["loopback", "linklocal", "uniquelocal"]);

function readTrustedProxies(env: Env, name: string): readonly string[] {
  const entries = (env[name] ?? "").split(/[\s,]+/).filter((entry) => entry !== "");
  for (const entry of entries) {
    if (proxyRangeNames.has(entry)) continue;
    const [address = "", prefix, ...rest] = entry.split("/");
    const family = isIP(address);
    const bits = family === 4 ? 32 : 128;
    const prefixOk = prefix === undefined || (/^\d{1,3}$/.test(prefix) && Number(prefix) <= bits);
    if (family === 0 || !prefixOk || rest.length > 0) {
      throw new ConfigError(
        `${name} must be addresses or CIDR ranges of the proxies in front of the gateway (10.0.0.0/8, ::1), or loopback, linklocal, uniquelocal, separated by commas, got "${entry}"`,
      );
    }
  }
  return Object.freeze(entries);
}

function readTls(env: Env): TlsFiles | undefined {
  const certFile = readOptionalPath(env, "TLS_CERT_FILE");
  const keyFile = readOptionalPath(env, "TLS_KEY_FILE");
  if (certFile === undefined && keyFile === undefined) return undefined;
  if (certFile === undefined || keyFile === undefined) {
    const missing = certFile === undefined ? "TLS_CERT_FILE" : "TLS_KEY_FILE";
    throw new ConfigError(`${missing} must be set too: TLS_CERT_FILE and TLS_KEY_FILE go together`);
  }
  return { certFile, keyFile };
}

function readPort(env: Env, service: keyof typeof defaultPorts): number {
  const { env: name, port } = defaultPorts[service];
  return readInt(env, name, port, 0, 65535);
}

function readCommon(env: Env): CommonConfig {
  return {
    // Trimmed as ports and URLs are: "0.0.0.0 " from an env file is no name to resolve.
    host: readString(env, "HOST", "").trim() || "127.0.0.1",
    logLevel: readEnum(env, "LOG_LEVEL", logLevels, "info"),
    shutdownTimeoutMs: readInt(env, "SHUTDOWN_TIMEOUT_MS", 10_000, 0, 600_000),
    requestTimeoutMs: readInt(env, "REQUEST_TIMEOUT_MS", 30_000, 100, 600_000),
    tls: readTls(env),
  };
}

function readService(env: Env, service: keyof typeof defaultPorts): ServiceConfig {
  return {
    ...readCommon(env),
    port: readPort(env, service),
    maxRequestBytes: readInt(env, "MAX_REQUEST_BYTES", 1_048_576, 1024, 64 * 1_048_576),
  };
}

/** Config of the filter process. */
export function loadFilterConfig(env: Env = process.env): FilterConfig {
  return Object.freeze({
    ...readService(env, "filter"),
    // Blank is unset, as for the other file variables.
    termsFile: readOptionalPath(env, "FILTER_TERMS_FILE"),
  });
}

/** Config of the token (quota) process. */
export function loadTokenConfig(env: Env = process.env): TokenConfig {
  return Object.freeze({
    ...readService(env, "token"),
    quotaLimit: readInt(env, "QUOTA_LIMIT", 200, 0, Number.MAX_SAFE_INTEGER),
    quotaCost: readInt(env, "QUOTA_COST", 50, 1, Number.MAX_SAFE_INTEGER),
    quotaStore: readEnum(env, "QUOTA_STORE", ["memory", "redis"] as const, "memory"),
    redisUrl: readRedisUrl(env, "REDIS_URL", "redis://127.0.0.1:6379"),
    quotaFailOpen: readBool(env, "QUOTA_FAIL_OPEN", false),
  });
}

function readRequired(env: Env, name: string, expected: string): string {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") {
    throw new ConfigError(`${name} is required with LLM_BACKEND=openai: ${expected}`);
  }
  return raw.trim();
}

function readOpenAi(env: Env): OpenAiBackendConfig {
  readRequired(env, "OPENAI_BASE_URL", "the server's /v1 URL, such as http://127.0.0.1:11434/v1");
  const baseUrl = readHttpUrl(env, "OPENAI_BASE_URL", "");
  // fetch refuses a URL with user info: every call would fail as "unreachable".
  const { username, password } = new URL(baseUrl);
  if (username !== "" || password !== "") {
    throw new ConfigError(
      `OPENAI_BASE_URL must hold no user or password (the key goes in OPENAI_API_KEY), got ${shownUrl(baseUrl)}`,
    );
  }
  // The SDK appends each path (/chat/completions) to the URL as text: after a
  // query or fragment it would no longer be part of the path.
  if (/[?#]/.test(baseUrl)) {
    throw new ConfigError(
      `OPENAI_BASE_URL must have no query or fragment (the SDK adds /chat/completions after it), got ${shownUrl(baseUrl)}`,
    );
  }
  return {
    baseUrl,
    apiKey: (env.OPENAI_API_KEY ?? "").trim(),
    model: readRequired(env, "LLM_MODEL", "the model to ask, such as llama3.2 or gpt-4o-mini"),
  };
}

/** Config of the LLM process. */
export function loadLlmConfig(env: Env = process.env): LlmConfig {
  const backend = readEnum(env, "LLM_BACKEND", ["echo", "openai"] as const, "echo");
  return Object.freeze({
    ...readService(env, "llm"),
    backend,
    echoDelayMs: readInt(env, "ECHO_DELAY_MS", 0, 0, 600_000),
    echoChunkDelayMs: readInt(env, "ECHO_CHUNK_DELAY_MS", 0, 0, 60_000),
    openai: backend === "openai" ? Object.freeze(readOpenAi(env)) : undefined,
    timeoutMs: readInt(env, "LLM_TIMEOUT_MS", 60_000, 1, 3_600_000),
    maxTokens: readInt(env, "LLM_MAX_TOKENS", 1_024, 1, 10_000_000),
    // Under the gateway's 4 MiB read limit for an answer.
    maxReplyBytes: readInt(env, "LLM_MAX_REPLY_BYTES", 524_288, 1_024, 3 * 1_048_576),
  });
}

/** Config of the history process. */
export function loadHistoryConfig(env: Env = process.env): HistoryConfig {
  return Object.freeze({
    ...readService(env, "history"),
    database: readDatabaseUrl(env, "HISTORY_DATABASE_URL", "sqlite:./data/history.db"),
  });
}

/** Config of the HTTP gateway. */
export function loadGatewayConfig(env: Env = process.env): GatewayConfig {
  const url = (service: "token" | "filter" | "llm" | "history") =>
    readServiceUrl(
      env,
      `${service.toUpperCase()}_URL`,
      `http://127.0.0.1:${defaultPorts[service].port}`,
    );
  return Object.freeze({
    ...readCommon(env),
    port: readPort(env, "gateway"),
    tokenUrl: url("token"),
    filterUrl: url("filter"),
    llmUrl: url("llm"),
    historyUrl: url("history"),
    filterTimeoutMs: readInt(env, "FILTER_TIMEOUT_MS", 2_000, 1, 600_000),
    tokenTimeoutMs: readInt(env, "TOKEN_TIMEOUT_MS", 2_000, 1, 600_000),
    llmTimeoutMs: readInt(env, "LLM_TIMEOUT_MS", 60_000, 1, 3_600_000),
    historyTimeoutMs: readInt(env, "HISTORY_TIMEOUT_MS", 2_000, 1, 600_000),
    historyRetryWindowMs: readInt(env, "HISTORY_RETRY_WINDOW_MS", 60_000, 0, 86_400_000),
    historyQueueLimit: readInt(env, "HISTORY_QUEUE_LIMIT", 10_000, 0, 10_000_000),
    maxBodyBytes: readInt(env, "MAX_BODY_BYTES", 65_536, 64, 64 * 1_048_576),
    maxTextChars: readInt(env, "MAX_TEXT_CHARS", 8_000, 1, 10_000_000),
    upstreamProtocol: readEnum(
      env,
      "UPSTREAM_PROTOCOL",
      ["frames", "connect", "grpc"] as const,
      "frames",
    ),
    upstreamMaxConnectionAgeMs: readConnectionAge(env, "UPSTREAM_MAX_CONNECTION_AGE_MS"),
    quotaCostMode: readEnum(env, "QUOTA_COST_MODE", ["fixed", "tokens"] as const, "fixed"),
    quotaReplyReserve: readInt(env, "QUOTA_REPLY_RESERVE", 100, 0, 10_000_000),
    streamKeepAliveMs: readInt(env, "STREAM_KEEPALIVE_MS", 15_000, 0, 3_600_000),
    rateLimitPerMinute: readInt(env, "RATE_LIMIT_PER_MINUTE", 0, 0, 1_000_000_000),
    apiKeysFile: readOptionalPath(env, "API_KEYS_FILE"),
    upstreamCaFile: readOptionalPath(env, "UPSTREAM_CA_FILE"),
    corsOrigins: readOrigins(env, "CORS_ORIGINS"),
    trustProxy: readTrustedProxies(env, "TRUST_PROXY"),
  });
}

/** Where `chatmesh healthcheck` finds a process: its HOST, its *_PORT, and whether it serves TLS. */
export interface HealthcheckConfig {
  readonly host: string;
  readonly port: number;
  /** TLS_CERT_FILE and TLS_KEY_FILE are set: the process answers https only. */
  readonly tls: boolean;
}

/** Config of `chatmesh healthcheck <name>`, read from the environment the process has. */
export function loadHealthcheckConfig(
  name: keyof typeof defaultPorts,
  env: Env = process.env,
): HealthcheckConfig {
  const { host, tls } = readCommon(env);
  return Object.freeze({ host, port: readPort(env, name), tls: tls !== undefined });
}

/** What the `chatmesh client` command talks to. */
export interface ClientConfig {
  readonly filterUrl: string;
  readonly llmUrl: string;
  readonly timeoutMs: number;
  /** UPSTREAM_CA_FILE: a PEM CA trusted for https:// service URLs, as by the gateway. */
  readonly caFile: string | undefined;
}

/** Config of the seed's client. */
export function loadClientConfig(env: Env = process.env): ClientConfig {
  return Object.freeze({
    filterUrl: readServiceUrl(env, "FILTER_URL", `http://127.0.0.1:${defaultPorts.filter.port}`),
    llmUrl: readServiceUrl(env, "LLM_URL", `http://127.0.0.1:${defaultPorts.llm.port}`),
    timeoutMs: readInt(env, "CLIENT_TIMEOUT_MS", 10_000, 1, 600_000),
    caFile: readOptionalPath(env, "UPSTREAM_CA_FILE"),
  });
}
