import { getEventListeners } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Registry } from "prom-client";
import type { GatewayConfig } from "../lib/config.js";
import { requestTimeoutOptions } from "../lib/dual-protocol-server.js";
import { createHttpApp } from "../lib/http-app.js";
import type { Logger } from "../lib/logger.js";
import {
  counter,
  createMetricsRegistry,
  registerCountersRead,
  registerGaugeRead,
} from "../lib/metrics.js";
import type { ReadyCheck } from "../lib/readiness.js";
import { readTlsCredentials } from "../lib/tls.js";
import { newRequestId, traceLogFields } from "../lib/trace.js";
import { useBufferUtf8Encoding } from "../lib/utf8.js";
import type { ApiKeys } from "./auth.js";
import { parseChatInput, runChat } from "./chat.js";
import { cancelledOnClose } from "./client-gone.js";
import { createCorsAnswerHeaders } from "./cors.js";
import {
  badRequest,
  type HttpError,
  httpErrorFromFastify,
  httpErrorFromUnroutable,
} from "./errors.js";
import { registerHistory } from "./history.js";
import { openAiErrorFrom, outcomeOf as openAiOutcomeOf } from "./openai/errors.js";
import { registerOpenAiApi } from "./openai/routes.js";
import { registerChatPage } from "./page.js";
import { apiHeaders, createClientErrorHandler, registerProtection } from "./protection.js";
import { type QuotaState, rateLimitHeaders } from "./quota.js";
import { createCostPolicy } from "./quota-cost.js";
import { registerQuotaRoute } from "./quota-route.js";
import { createRefunder } from "./refunder.js";
import { registerBodyGuards } from "./request-guards.js";
import { type OnChatDone, registerChatStream } from "./stream.js";
import type { Upstreams } from "./upstreams.js";

export interface GatewayDeps {
  readonly config: GatewayConfig;
  readonly logger: Logger;
  readonly upstreams: Upstreams;
  /** Where the gateway's metrics go; a new registry when absent. */
  readonly registry?: Registry;
  /** What `/readyz` checks: the upstream services. */
  readonly readyChecks?: Readonly<Record<string, ReadyCheck>>;
  /** Called with each streamed chat that reached `done` (where history saving plugs in). */
  readonly onChatDone?: OnChatDone;
  /** The keys of API_KEYS_FILE; without them no key is asked for. */
  readonly apiKeys?: ApiKeys;
}

const isHttpError = (value: object): value is HttpError => "status" in value;

/**
 * The methods a 405's `Allow` can name (HEAD comes with each GET route).
 * OPTIONS is not looked up: with CORS_ORIGINS, its one route serves every
 * path, known or not.
 */
const httpMethods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] as const;

/** The routes whose answers chatmesh_chats_total counts. */
const chatRoutes = new Set(["/chat", "/chat/stream", "/v1/chat/completions"]);
const hostRequired = badRequest("Host header is required");

/** A bounded label for a chat's result: "ok", or the error's words in snake case. */
const outcomeOf = (result: object): string =>
  isHttpError(result) ? result.body.error.replaceAll(" ", "_") : "ok";

/**
 * Builds the HTTP gateway (not listening): POST /chat, POST /chat/stream,
 * the chat page at GET /, GET /quota, GET /history, the OpenAI-compatible
 * API under /v1, GET /health and /healthz. Every response carries `x-request-id`, made here (never taken
 * from the caller, because it is also the id the quota is charged under); a
 * chat answered 200 or 429 carries the RateLimit headers.
 */
export async function buildGateway(deps: GatewayDeps): Promise<FastifyInstance> {
  useBufferUtf8Encoding();
  const { config, logger, upstreams } = deps;
  const registry = deps.registry ?? createMetricsRegistry();
  const chats = counter(registry, "chatmesh_chats_total", "Chats answered, by outcome", [
    "outcome",
  ]);
  const refunds = counter(
    registry,
    "chatmesh_refunds_total",
    "Refunds of failed chats' charges, by result: ok, retried (done in the background), failed (given up)",
    ["result"],
  );
  const credentials = await readTlsCredentials(config.tls);
  const timeouts = requestTimeoutOptions(config.requestTimeoutMs);
  const securityHeaders = apiHeaders();
  // The connections reading a /v1 request's body now: one too slow for
  // REQUEST_TIMEOUT_MS is answered in OpenAI's shape too.
  const readingV1 = new WeakSet<object>();
  // And the Origin of the request each connection is reading, when CORS_ORIGINS is set.
  const readingOrigin = new WeakMap<object, string>();
  const corsAnswer = createCorsAnswerHeaders(config.corsOrigins);
  const corsOn = config.corsOrigins.length > 0;
  // Each connection's latest request: while its answer is unfinished, a 408
  // for it (too slow for REQUEST_TIMEOUT_MS) carries its id.
  const latestRequest = new WeakMap<object, { id: string; res: ServerResponse }>();
  /**
   * Answers a request refused before the hooks that would add the request
   * id and the security headers (and under /v1, in OpenAI's shape).
   */
  const sendEdgeError = (req: FastifyRequest, reply: FastifyReply, http: HttpError) =>
    reply
      .code(http.status)
      .headers(securityHeaders)
      .header("x-request-id", req.id)
      .headers(corsAnswer(req.headers.origin))
      .send(req.url.startsWith("/v1/") ? openAiErrorFrom(http).body : http.body);
  const app = createHttpApp({
    logger,
    registry,
    readyChecks: deps.readyChecks,
    requestId: (req) => req.id,
    fastify: {
      bodyLimit: config.maxBodyBytes,
      ...(config.trustProxy.length > 0 ? { trustProxy: [...config.trustProxy] } : {}),
      requestIdHeader: false,
      genReqId: () => newRequestId(),
      clientErrorHandler: createClientErrorHandler(newRequestId, {
        readingV1: (socket) => readingV1.has(socket),
        readingOrigin: (socket) => readingOrigin.get(socket),
        corsHeaders: corsAnswer,
        readingId: (socket) => {
          const latest = latestRequest.get(socket);
          return latest?.res.writableFinished === false ? latest.id : undefined;
        },
        v1Body: (status, error) => openAiErrorFrom({ status, body: { error } }).body,
      }),
      // Before routing, so before every hook: what they would add, added here.
      frameworkErrors: (err, req, reply) =>
        sendEdgeError(req, reply as FastifyReply, httpErrorFromUnroutable(err)),
      // Node's own default is 300 s, and Fastify turns it off (0): a client
      // sending a byte now and then would hold its connection for ever.
      requestTimeout: config.requestTimeoutMs,
      // Fastify's options type has no room for `http` or `https`; its constructor takes them.
      ...((credentials === undefined
        ? { http: { ...timeouts, requireHostHeader: false } }
        : { https: { ...credentials, ...timeouts, requireHostHeader: false } }) as object),
    },
  });
  app.server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    const v1 = req.url?.startsWith("/v1/") === true;
    const origin = corsOn ? req.headers.origin : undefined;
    if (!v1 && origin === undefined) return;
    if (v1) readingV1.add(req.socket);
    if (origin !== undefined) readingOrigin.set(req.socket, origin);
    res.once("finish", () => {
      readingV1.delete(req.socket);
      readingOrigin.delete(req.socket);
    });
  });
  // JSON only: every other content type, text/plain included, is a 415.
  app.removeContentTypeParser("text/plain");
  app.addHook("onRequest", async (req, reply) => {
    reply.header("x-request-id", req.id);
    latestRequest.set(req.raw.socket, { id: req.id, res: reply.raw });
    // RFC 9112, 3.2: an HTTP/1.1 request without Host is a 400. Node's own
    // answer to it (requireHostHeader) was bare: no body, no request id.
    if (req.headers.host === undefined && req.raw.httpVersion === "1.1") {
      return sendEdgeError(req, reply, hostRequired);
    }
  });
  /**
   * Counts a chat refused before its route's handler ran (bad JSON, too
   * large, …); under /v1 in that API's terms, as its own refusals.
   */
  const countRefused = (req: FastifyRequest, status: number, error: string) => {
    const route = req.routeOptions.url ?? "";
    if (!chatRoutes.has(route)) return;
    const outcome = route.startsWith("/v1/")
      ? openAiOutcomeOf(openAiErrorFrom({ status, body: { error } }))
      : error;
    chats.inc({ outcome: outcome.replaceAll(" ", "_") });
  };
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const { status, body } = httpErrorFromFastify(err);
    if (status === 500) req.log.error({ ...traceLogFields(req.trace), err }, "unhandled error");
    countRefused(req, status, body.error);
    return reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    // A path served with other methods is a 405 naming them (RFC 9110, 15.5.6).
    const url = req.url.split("?")[0] ?? "";
    const allowed = httpMethods.filter((method) => app.findRoute({ method, url }) !== null);
    if (allowed.length === 0) return reply.code(404).send({ error: "not found" });
    const allow = config.corsOrigins.length > 0 ? [...allowed, "OPTIONS"] : allowed;
    return reply.code(405).header("allow", allow.join(", ")).send({ error: "method not allowed" });
  });
  await registerProtection(app, {
    rateLimitPerMinute: config.rateLimitPerMinute,
    apiKeys: deps.apiKeys,
    corsOrigins: config.corsOrigins,
  });
  registerBodyGuards(app, countRefused);

  // Appends and refunds still pending at shutdown are retried until
  // SHUTDOWN_TIMEOUT_MS after closing began, less time for a last call to
  // time out and the losses to be logged.
  let closingAt = 0;
  // Streamed replies still running when the process must soon exit are
  // cancelled in time for their refunds (one token call and a retry): cut
  // off by the exit, one would keep its charge and end with no event.
  const stopping = new AbortController();
  let stopTimer: NodeJS.Timeout | undefined;
  app.addHook("preClose", (done) => {
    closingAt = Date.now();
    stopTimer = setTimeout(
      () => {
        // Each stream running listens to the signal until it ends.
        const streams = getEventListeners(stopping.signal, "abort").length;
        if (streams > 0) {
          logger.warn(
            { streams },
            "shutdown: streamed replies still running are cancelled, their charges given back",
          );
        }
        stopping.abort(new Error("the gateway is shutting down"));
      },
      Math.max(0, closeBy(2 * config.tokenTimeoutMs) - Date.now()),
    );
    stopTimer.unref();
    done();
  });
  app.addHook("onClose", (_app, done) => {
    clearTimeout(stopTimer);
    done();
  });
  const closeBy = (timeoutMs: number) => closingAt + config.shutdownTimeoutMs - timeoutMs - 250;
  const history = registerHistory(app, { client: upstreams.history, config, closeBy });
  const refunder = createRefunder({
    token: upstreams.token,
    logger,
    refunds,
    settleMs: config.tokenTimeoutMs,
  });
  app.addHook("onClose", () => refunder.close(closeBy(config.tokenTimeoutMs)));
  registerCountersRead(
    registry,
    "chatmesh_history_appends_total",
    "Chats the gateway sent to the history, by result: appended, recovered (appended after failed attempts), failed_attempt, dropped (lost)",
    "result",
    () => {
      const { appended, recovered, failedAttempts, dropped } = history.stats();
      return { appended, recovered, failed_attempt: failedAttempts, dropped };
    },
  );
  registerGaugeRead(
    registry,
    "chatmesh_history_pending",
    "Chats waiting to be sent to the history, or sent again",
    () => history.stats().pending,
  );
  const cost = createCostPolicy(config);
  // Streamed chats are kept like the others once they reach `done`.
  const onChatDone: OnChatDone =
    deps.onChatDone ??
    ((chat) =>
      history.record({
        userId: chat.userId,
        text: chat.cleaned,
        reply: chat.reply,
        createdAt: new Date(),
        requestId: chat.requestId,
        trace: chat.trace,
      }));
  app.post("/chat", async (req, reply) => {
    const input = parseChatInput(req.body, config.maxTextChars);
    const seen: { quota?: QuotaState } = {};
    const onQuota = (quota: QuotaState) => Object.assign(seen, { quota });
    const result = isHttpError(input)
      ? input
      : await runChat(
          {
            upstreams,
            logger,
            trace: req.trace,
            refunds,
            onQuota,
            history,
            cost,
            refunder,
            clientGone: cancelledOnClose(reply.raw),
          },
          input,
          req.id,
        );
    chats.inc({ outcome: outcomeOf(result) });
    const status = isHttpError(result) ? result.status : 200;
    // After a failure the charge was given back: the quota seen before it is stale.
    if (seen.quota && (status === 200 || status === 429)) {
      reply.headers(rateLimitHeaders(seen.quota));
    }
    if (isHttpError(result)) return reply.code(result.status).send(result.body);
    return result;
  });
  registerChatStream(app, {
    upstreams,
    logger,
    maxTextChars: config.maxTextChars,
    chats,
    refunds,
    onChatDone,
    cost,
    refunder,
    stopping: stopping.signal,
    llmTimeoutMs: config.llmTimeoutMs,
    keepAliveMs: config.streamKeepAliveMs,
  });
  await registerOpenAiApi(app, {
    upstreams,
    logger,
    maxTextChars: config.maxTextChars,
    chats,
    refunds,
    history,
    onChatDone,
    cost,
    refunder,
    stopping: stopping.signal,
    llmTimeoutMs: config.llmTimeoutMs,
    keepAliveMs: config.streamKeepAliveMs,
  });
  await registerChatPage(app);
  registerQuotaRoute(app, upstreams);
  app.get("/health", async (_req, reply) => reply.type("text/plain").send("ok"));
  return app;
}
