import { createRequire } from "node:module";
import {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions,
  fastify,
  LogController,
} from "fastify";
import type { Registry } from "prom-client";
import type { Logger } from "./logger.js";
import { clientClosedStatus, registerHttpMetrics } from "./metrics.js";
import { type ReadyCheck, registerHealthRoutes } from "./readiness.js";
import { continueTrace, type TraceContext, traceLogFields } from "./trace.js";

declare module "fastify" {
  interface FastifyRequest {
    /** The request's trace context: continued from `traceparent`, or new. */
    trace: TraceContext;
  }
}

export interface HttpAppOptions {
  readonly logger: Logger;
  readonly registry: Registry;
  /** What `/readyz` checks. */
  readonly readyChecks?: Readonly<Record<string, ReadyCheck>> | undefined;
  /** The request id of a request: a header for services, Fastify's own id at the edge. */
  readonly requestId: (req: FastifyRequest) => string | undefined;
  readonly fastify?: Omit<FastifyServerOptions, "logger" | "loggerInstance" | "logController">;
}

const requireModule = createRequire(import.meta.url);

/** Lines to log in a request's trace when its response closes, by raw request. */
const closeLines = new WeakMap<object, (trace: TraceContext) => void>();

/**
 * Has `log` called with the trace of the request whose raw Node request is
 * `raw`, once its response closes: for a line about a request that the
 * server writes where it has only the raw request (an HTTP/2 request
 * cancelled as too slow), so that it carries the trace and request id of
 * the request's own line.
 */
export function logInTraceOnClose(raw: object, log: (trace: TraceContext) => void): void {
  closeLines.set(raw, log);
}

type CompilersFactory = Required<
  NonNullable<NonNullable<FastifyServerOptions["schemaController"]>["compilersFactory"]>
>;

/** Fastify's own compiler factory from `module`, loaded when first called. */
function onDemand<K extends keyof CompilersFactory>(module: string): CompilersFactory[K] {
  let factory: ((...args: unknown[]) => unknown) | undefined;
  return ((...args: unknown[]) => {
    factory ??= (requireModule(module) as () => (...args: unknown[]) => unknown)();
    return factory(...args);
  }) as CompilersFactory[K];
}

/**
 * Fastify's JSON Schema compilers (Ajv and fast-json-stringify), loaded only
 * when a route has a schema. No route of ours does, and loading them anyway
 * cost every process ~1 MB of heap and a few MB of RSS. They come with
 * Fastify; `requireModule` loads them from node_modules, not from the bundle.
 */
const schemaCompilersOnDemand: CompilersFactory = {
  buildValidator: onDemand<"buildValidator">("@fastify/ajv-compiler"),
  buildSerializer: onDemand<"buildSerializer">("@fastify/fast-json-stringify-compiler"),
};

/** The status of a request Node's HTTP/1.1 server cut off at REQUEST_TIMEOUT_MS. */
const requestTimeoutStatus = 408;

type FrameworkErrors = NonNullable<FastifyServerOptions["frameworkErrors"]>;

/** Fastify's refusal of a request it could not route, as JSON: its status and words. */
const answerPlainly: FrameworkErrors = (err, _req, reply) => {
  (reply as FastifyReply).code(err.statusCode ?? 500).send({ error: err.message });
};

/**
 * A Fastify app with what every process has: the process's pino logger and
 * one log line per request (route, status, duration, trace id) instead of
 * Fastify's two, a trace context per request, `GET /healthz`, `GET /readyz`
 * and `GET /metrics` with HTTP request metrics. A request whose client went
 * away before its answer is logged and counted with status 499; one cut off
 * at REQUEST_TIMEOUT_MS with the 408 it was answered.
 */
export function createHttpApp(options: HttpAppOptions): FastifyInstance {
  const answerFrameworkError = options.fastify?.frameworkErrors ?? answerPlainly;
  const app = fastify({
    schemaController: { compilersFactory: schemaCompilersOnDemand },
    ...options.fastify,
    loggerInstance: options.logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    // A request Fastify refuses before routing it (a path that is not
    // percent-encoded UTF-8) runs no hook: it is traced, logged and counted here.
    frameworkErrors: (err, req, reply) => {
      startTrace(req);
      reply.raw.once("close", () => closeLines.get(req.raw)?.(req.trace));
      reply.raw.once("finish", () => {
        logRequest(req, reply.statusCode, reply.elapsedTime);
        countRequest(req, reply.statusCode, reply.elapsedTime);
      });
      answerFrameworkError(err, req, reply);
    },
  }) as unknown as FastifyInstance;
  app.decorateRequest("trace", undefined as unknown as TraceContext);
  const countRequest = registerHttpMetrics(app, options.registry);
  const startTrace = (req: FastifyRequest) => {
    const { traceparent, tracestate } = req.headers;
    req.trace = continueTrace(
      typeof traceparent === "string" ? traceparent : undefined,
      options.requestId(req),
      typeof tracestate === "string" ? tracestate : undefined,
    );
  };
  app.addHook("onRequest", async (req, reply) => {
    startTrace(req);
    // A response closed before it finished: the client went away first
    // (onResponse never runs for it). Logged and counted as 499 then, or as
    // the 408 Node's HTTP/1.1 server answered on the connection (destroying
    // it with that error) when the request outlasted REQUEST_TIMEOUT_MS. A
    // line noted for the request (logInTraceOnClose) comes first, finished or not.
    const res = reply.raw;
    res.once("close", () => {
      closeLines.get(req.raw)?.(req.trace);
      if (res.writableFinished) return;
      const { errored } = req.raw.socket as { errored?: { code?: unknown } | null };
      const status =
        errored?.code === "ERR_HTTP_REQUEST_TIMEOUT" ? requestTimeoutStatus : clientClosedStatus;
      // Fastify's clock for the reply, which never ended: the time until now.
      logRequest(req, status, reply.elapsedTime);
      countRequest(req, status, reply.elapsedTime);
    });
  });
  const logRequest = (req: FastifyRequest, status: number, ms: number) => {
    // The line's fields cost more than a request's share of CPU: built only when written.
    if (!options.logger.isLevelEnabled("info")) return;
    req.log.info(
      {
        ...traceLogFields(req.trace),
        method: req.method,
        route: req.routeOptions.url ?? "unmatched",
        status,
        ms: Math.round(ms * 10) / 10,
      },
      "request",
    );
  };
  app.addHook("onResponse", async (req, reply) => {
    // Run on an error of an unfinished response too, which its close counts.
    if (reply.raw.writableFinished) logRequest(req, reply.statusCode, reply.elapsedTime);
  });
  // While draining, an HTTP/1.1 connection closes after its response, so a
  // keep-alive client cannot hold the process open until its idle timeout.
  // A response written by a handler that took it over (an event stream, or
  // its JSON answer instead) gets no such header: its connection, idle once
  // the response ends, is closed by the sweep below.
  let draining = false;
  let sweep: NodeJS.Timeout | undefined;
  app.addHook("preClose", async () => {
    draining = true;
    const server = app.server as { closeIdleConnections?: () => void };
    sweep = setInterval(() => server.closeIdleConnections?.(), 100);
    sweep.unref();
  });
  app.addHook("onClose", async () => clearInterval(sweep));
  app.addHook("onSend", async (req, reply) => {
    if (draining && req.raw.httpVersionMajor === 1) reply.header("connection", "close");
  });
  registerHealthRoutes(app, options.readyChecks);
  return app;
}
