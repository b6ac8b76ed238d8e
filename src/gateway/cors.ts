import cors from "@fastify/cors";
import type { FastifyInstance } from "fastify";
import { rateLimitHeaderNames } from "./quota.js";

/**
 * What a page on another origin may read of an answer, besides the
 * safelisted headers. The OpenAI SDK reads `x-should-retry`: hidden from it,
 * it retried a spent quota's 429 twice, with back-off, before failing.
 */
const exposedHeaders = ["x-request-id", "retry-after", "x-should-retry", ...rateLimitHeaderNames];

/** How long a browser may keep a preflight's answer, in seconds. */
const preflightMaxAgeS = 600;

/**
 * Lets pages of `origins` (CORS_ORIGINS; `["*"]` for any) call the API from
 * a browser: their requests' answers carry `Access-Control-Allow-Origin` and
 * the headers above, and a preflight is answered 204 before any API key is
 * asked for (a browser never sends one with it). Registered before the key
 * check for that reason. No cookies are involved: a key travels in
 * `Authorization`, which the preflight allows like any header asked for.
 * Without origins nothing is registered, and a browser keeps other pages
 * out, as before.
 */
export async function registerCors(
  app: FastifyInstance,
  origins: readonly string[],
): Promise<void> {
  if (origins.length === 0) return;
  await app.register(cors, {
    origin: origins[0] === "*" ? "*" : [...origins],
    methods: ["GET", "HEAD", "POST"],
    exposedHeaders,
    maxAge: preflightMaxAgeS,
    // An OPTIONS without Origin (not a browser's preflight) gets the same
    // 204 rather than the plugin's text/plain 400.
    strictPreflight: false,
  });
}

/** The CORS headers of an answer to a request from `origin` (undefined: none sent). */
export type CorsAnswerHeaders = (origin: string | undefined) => Readonly<Record<string, string>>;

/**
 * The CORS headers the plugin gives an answer, for the answers made before
 * its hook runs: a request Node's parser refused (headers too large, a body
 * slower than REQUEST_TIMEOUT_MS) or a path Fastify could not route.
 * Without them a page of a listed origin saw a network error, not the
 * refusal.
 */
export function createCorsAnswerHeaders(origins: readonly string[]): CorsAnswerHeaders {
  if (origins.length === 0) return () => ({});
  const exposed = exposedHeaders.join(", ");
  if (origins[0] === "*") {
    const any = { "access-control-allow-origin": "*", "access-control-expose-headers": exposed };
    return () => any;
  }
  const listed = new Set(origins);
  const other = { vary: "Origin" };
  return (origin) =>
    origin !== undefined && listed.has(origin)
      ? {
          "access-control-allow-origin": origin,
          "access-control-expose-headers": exposed,
          vary: "Origin",
        }
      : other;
}
