import { type IncomingMessage, type ServerResponse, STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import rateLimit, { normalizeIP } from "@fastify/rate-limit";
import type { FastifyInstance } from "fastify";
import helmet from "helmet";
import { type ApiKeys, registerApiKeyAuth } from "./auth.js";
import { type CorsAnswerHeaders, registerCors } from "./cors.js";

/**
 * Paths that need no key and count against no rate limit: health checks,
 * metrics, and the chat page's static files (its chats are API calls, which
 * do need a key when keys are configured).
 */
export const opsPaths: ReadonlySet<string> = new Set([
  "/health",
  "/healthz",
  "/readyz",
  "/metrics",
  "/",
  "/chat.js",
  "/chat.css",
  "/favicon.svg",
]);

/**
 * Content-Security-Policy of every response: only the gateway's own scripts,
 * styles and connections (a page it serves needs no inline code), nothing
 * framed, no plugins.
 */
export const contentSecurityPolicy = {
  useDefaults: false,
  directives: {
    defaultSrc: ["'self'"],
    scriptSrc: ["'self'"],
    styleSrc: ["'self'"],
    imgSrc: ["'self'", "data:"],
    connectSrc: ["'self'"],
    objectSrc: ["'none'"],
    baseUri: ["'none'"],
    formAction: ["'self'"],
    frameAncestors: ["'none'"],
  },
};

/**
 * The headers helmet sets with the policy above (and X-Frame-Options: DENY,
 * as its frame-ancestors says), worked out once: they are
 * the same for every response (no nonces), so no request pays for helmet's
 * per-request work. The chat page's files carry them (`registerChatPage`).
 */
export function documentHeaders(): Readonly<Record<string, string>> {
  const headers: Record<string, string> = {};
  const res = {
    setHeader(name: string, value: unknown) {
      headers[name.toLowerCase()] = String(value);
    },
    removeHeader(name: string) {
      delete headers[name.toLowerCase()];
    },
  };
  let applied = false;
  helmet({ contentSecurityPolicy, xFrameOptions: { action: "deny" } })(
    {} as IncomingMessage,
    res as unknown as ServerResponse,
    () => {
      applied = true;
    },
  );
  if (!applied) throw new Error("helmet did not apply its headers synchronously");
  return headers;
}

/**
 * The headers of every other response (JSON answers, event streams, metrics,
 * errors): the set OWASP's REST Security Cheat Sheet gives for API
 * responses: they load nothing, no page may frame them, no browser may
 * sniff another type in them, no cache may keep them; HSTS is helmet's. The
 * rest of helmet's headers (Referrer-Policy, the Cross-Origin-* policies,
 * X-DNS-Prefetch-Control…) govern a document a browser renders; on every
 * answer those eight cost the gateway ~3 % of its CPU per chat under
 * `make bench`.
 */
export function apiHeaders(): Readonly<Record<string, string>> {
  const hsts = documentHeaders()["strict-transport-security"];
  if (hsts === undefined) throw new Error("helmet set no Strict-Transport-Security");
  return {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "strict-transport-security": hsts,
    "cache-control": "no-store",
  };
}

/** What Node's HTTP parser refuses before Fastify sees a request: status and the gateway's words. */
function clientErrorAnswer(code: string | undefined): [number, string] {
  if (code === "ERR_HTTP_REQUEST_TIMEOUT") return [408, "request timeout"];
  if (code === "HPE_HEADER_OVERFLOW") return [431, "request headers too large"];
  return [400, "bad request"];
}

/** A request line for a path under /v1, at the start of what a client sent. */
const v1RequestLine = /^[A-Z]+ \/v1\//;

/** An `Origin` header line in what a client sent. */
const originLine = /\r\norigin:[ \t]*([^\r\n]*?)[ \t]*\r\n/i;

export interface ClientErrorOptions {
  /** Whether the request the connection is reading now (its headers came) is under /v1. */
  readonly readingV1?: (socket: Duplex) => boolean;
  /** The body under /v1 of an error with this status and these words (OpenAI's shape). */
  readonly v1Body?: (status: number, words: string) => unknown;
  /** The `Origin` of the request the connection is reading now (its headers came), if any. */
  readonly readingOrigin?: (socket: Duplex) => string | undefined;
  /** The CORS headers (CORS_ORIGINS) of an answer to a request from an origin. */
  readonly corsHeaders?: CorsAnswerHeaders;
  /** The id of the request the connection is reading now (its headers came), to answer it with. */
  readonly readingId?: (socket: Duplex) => string | undefined;
}

/**
 * Answers a request Node's HTTP parser refused (a malformed request line or
 * header, headers over the size limit, a request slower than
 * REQUEST_TIMEOUT_MS) as the gateway answers every error: a JSON
 * `{"error": …}` body (under /v1, `v1Body`'s), an `x-request-id`, the API's
 * security headers, and for a page of an origin CORS_ORIGINS lets in, its
 * CORS headers; then closes the connection, as Node does. Fastify's own
 * answer had none of these. The path and the `Origin` are read from the
 * bytes the parser refused, or for a request too slow, from `readingV1`
 * and `readingOrigin`; a request too slow keeps the id it is logged with
 * (`readingId`).
 */
export function createClientErrorHandler(
  newRequestId: () => string,
  options: ClientErrorOptions = {},
): (err: Error & { code?: string; rawPacket?: unknown }, socket: Duplex) => void {
  const headers = Object.entries(apiHeaders())
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join("");
  const underV1 = (err: { rawPacket?: unknown }, socket: Duplex) =>
    Buffer.isBuffer(err.rawPacket)
      ? v1RequestLine.test(err.rawPacket.toString("latin1", 0, 16))
      : (options.readingV1?.(socket) ?? false);
  const originOf = (err: { rawPacket?: unknown }, socket: Duplex) =>
    Buffer.isBuffer(err.rawPacket)
      ? originLine.exec(err.rawPacket.toString("latin1"))?.[1]
      : options.readingOrigin?.(socket);
  return (err, socket) => {
    if (err.code === "ECONNRESET" || socket.destroyed) return;
    if (socket.writable) {
      const [status, words] = clientErrorAnswer(err.code);
      const body = JSON.stringify(
        options.v1Body !== undefined && underV1(err, socket)
          ? options.v1Body(status, words)
          : { error: words },
      );
      const cors = Object.entries(options.corsHeaders?.(originOf(err, socket)) ?? {})
        .map(([name, value]) => `${name}: ${value}\r\n`)
        .join("");
      socket.write(
        `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${body.length}\r\nx-request-id: ${options.readingId?.(socket) ?? newRequestId()}\r\n${headers}${cors}connection: close\r\n\r\n${body}`,
      );
    }
    socket.destroy(err);
  };
}

/** Marks the rate limiter's refusal, for the gateway's error handler. */
export class RateLimitedError extends Error {
  override name = "RateLimitedError";
  readonly statusCode = 429;
}

export interface ProtectionOptions {
  /** Requests per minute per client; 0 turns the limit off. */
  readonly rateLimitPerMinute: number;
  /** When set, every request but the ops paths needs one of these keys. */
  readonly apiKeys?: ApiKeys | undefined;
  /** Origins whose pages may call the API from a browser (`*` for any); none by default. */
  readonly corsOrigins?: readonly string[];
}

/**
 * The gateway's locked-down edge, registered before its routes: security
 * headers on every response (`apiHeaders`, which the chat page's files
 * replace with `documentHeaders`); with API keys, a key on every call
 * and the key's user as the only user (a cross-origin preflight, allowed
 * by CORS_ORIGINS, needs none); with a rate limit, at most N requests
 * a minute per client (the key's user, else the client address: requests
 * without a valid key count there before they are refused, unknown paths
 * too), refused with 429 and Retry-After (the error handler words it
 * `rate limited`).
 */
export async function registerProtection(
  app: FastifyInstance,
  options: ProtectionOptions,
): Promise<void> {
  const securityHeaders = apiHeaders();
  app.addHook("onRequest", (_req, reply, done) => {
    reply.headers(securityHeaders);
    done();
  });
  await registerCors(app, options.corsOrigins ?? []);
  if (options.apiKeys !== undefined) {
    registerApiKeyAuth(app, options.apiKeys, { publicPaths: opsPaths });
  }
  if (options.rateLimitPerMinute > 0) {
    await app.register(rateLimit, {
      max: options.rateLimitPerMinute,
      timeWindow: 60_000,
      // An address as the plugin's own key generator takes it: an IPv6 client
      // by its /64 (one host holds the whole subnet, and could take a fresh
      // address for every request), an IPv4-mapped one as IPv4.
      keyGenerator: (req) =>
        req.apiUser === undefined ? `ip:${normalizeIP(req.ip)}` : `user:${req.apiUser}`,
      allowList: (req) => opsPaths.has(req.routeOptions.url ?? ""),
      // The quota has the RateLimit-* headers; this limit only says when to come back.
      addHeadersOnExceeding: {
        "x-ratelimit-limit": false,
        "x-ratelimit-remaining": false,
        "x-ratelimit-reset": false,
      },
      addHeaders: {
        "x-ratelimit-limit": false,
        "x-ratelimit-remaining": false,
        "x-ratelimit-reset": false,
        "retry-after": true,
      },
      errorResponseBuilder: () => new RateLimitedError("rate limited"),
    });
    // The plugin limits routes (its hooks are theirs); unknown paths count
    // too, or with API keys their 404 or 401 would tell a guessed key from a
    // wrong one at full speed.
    const limitUnknown = app.rateLimit();
    // Callback style: a known route's request pays no promise for this check.
    app.addHook("onRequest", (req, reply, done) => {
      if (!req.is404) return done();
      limitUnknown.call(app, req, reply).then(() => done(), done);
    });
  }
}
