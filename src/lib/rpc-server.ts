import { setMaxListeners } from "node:events";
import type http from "node:http";
import type http2 from "node:http2";
import type { DescFile } from "@bufbuild/protobuf";
import {
  type ConnectRouter,
  createContextValues,
  createRouterTransport,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import type { FastifyInstance } from "fastify";
import type { Registry } from "prom-client";
import { file_chat_v1_errors } from "../../gen/chat/v1/errors_pb.js";
import type { ServiceConfig } from "./config.js";
import { createDualProtocolServer, type DualHandler } from "./dual-protocol-server.js";
import {
  createFastUnaryPath,
  createUnaryInvoker,
  dropFarDeadline,
  type FastMethod,
  recordServices,
  type UnaryInvoker,
} from "./fast-unary.js";
import { createFramesServer } from "./frames-server.js";
import { createHealthService, Health } from "./health.js";
import { createHttpApp, logInTraceOnClose } from "./http-app.js";
import { bracketIpv6Authority, settleAuthority } from "./local-host.js";
import type { Logger } from "./logger.js";
import { createMetricsRegistry, createRpcMetricsInterceptor } from "./metrics.js";
import type { ReadyCheck } from "./readiness.js";
import { registerReflection } from "./reflection.js";
import { createSecureDualProtocolServer } from "./secure-dual-protocol-server.js";
import { readTlsCredentials } from "./tls.js";
import { createTraceServerInterceptor, traceKey, traceLogFields } from "./trace.js";
import { useBufferUtf8Encoding } from "./utf8.js";

/**
 * A service as another component of the same process calls it (`chatmesh
 * all`): unary calls through the lean paths' invoker, streams through an
 * in-memory Connect router; both with the server's interceptors.
 */
export interface LocalService {
  readonly invoker: UnaryInvoker;
  /** A transport whose streams go through an in-memory router, with the caller's interceptors. */
  streams(callerInterceptors: readonly Interceptor[]): Transport;
  /** The service's logger: a call from the same process is logged as one over the wire. */
  readonly logger: Logger;
}

const localServices = new WeakMap<FastifyInstance, LocalService>();

/** How a component of the same process calls the services of `app` (made by createRpcServer). */
export function localServiceOf(app: FastifyInstance): LocalService {
  const local = localServices.get(app);
  if (local === undefined) throw new Error("not an app of createRpcServer");
  return local;
}

export interface RpcServerOptions {
  /** The process name. */
  readonly name: string;
  readonly config: ServiceConfig;
  readonly logger: Logger;
  /** Registers the service implementations on the Connect router. */
  readonly routes: (router: ConnectRouter) => void;
  /** Where the process's metrics go; a new registry when absent. */
  readonly registry?: Registry;
  readonly interceptors?: Interceptor[];
  /** What `/readyz` and the gRPC health service check (a store, say). */
  readonly readyChecks?: Readonly<Record<string, ReadyCheck>>;
}

/**
 * Builds the Fastify app of an RPC service: Connect routes that speak gRPC,
 * gRPC-Web and Connect over HTTP/1.1 and HTTP/2 on one port (cleartext, or
 * TLS with ALPN when TLS_CERT_FILE and TLS_KEY_FILE are set), with
 * grpc.health.v1.Health and server reflection (v1, v1alpha) beside the
 * services; every RPC is traced and measured; plus `GET /healthz`,
 * `GET /readyz` and `GET /metrics`. Nothing listens until the caller calls
 * `listen`.
 */
export async function createRpcServer(options: RpcServerOptions): Promise<FastifyInstance> {
  useBufferUtf8Encoding();
  const { config, logger } = options;
  const registry = options.registry ?? createMetricsRegistry();
  const interceptors = [
    ...(options.interceptors ?? []),
    createRpcMetricsInterceptor(registry, "server"),
  ];
  const fastMethods: FastMethod[] = [];
  // The lean paths hand the invoker the trace they continued; calls through
  // the router get theirs from the trace interceptor.
  const invoker = createUnaryInvoker(fastMethods, interceptors);
  const fastPath = createFastUnaryPath(invoker, { readMaxBytes: config.maxRequestBytes, logger });
  const frames = createFramesServer(invoker, {
    readMaxBytes: config.maxRequestBytes,
    logger,
    frameTimeoutMs: config.requestTimeoutMs,
  });
  const credentials = await readTlsCredentials(config.tls);
  // Logged once the stream has closed, in the trace its request line has.
  const onHttp2RequestTimeout = (req: http2.Http2ServerRequest) =>
    logInTraceOnClose(req, (trace) =>
      logger.warn(
        { ...traceLogFields(trace), path: req.url, timeoutMs: config.requestTimeoutMs },
        "HTTP/2 request not received in time: stream cancelled",
      ),
    );
  // Filled once the routes are registered: reflection's requests are streams.
  const streamedRequestPaths = new Set<string>();
  const app = createHttpApp({
    logger,
    registry,
    readyChecks: options.readyChecks,
    requestId: (req) => {
      const id = req.headers["x-request-id"];
      return typeof id === "string" ? id : undefined;
    },
    fastify: {
      forceCloseConnections: "idle",
      // Fastify's types know one protocol per server; this one serves both.
      serverFactory: (handler) =>
        (credentials === undefined
          ? createDualProtocolServer(handler as DualHandler, {
              fastPath,
              frames,
              requestTimeoutMs: config.requestTimeoutMs,
              onHttp2RequestTimeout,
              streamedRequestPaths,
            })
          : createSecureDualProtocolServer(handler as DualHandler, credentials, {
              fastPath,
              requestTimeoutMs: config.requestTimeoutMs,
              onHttp2RequestTimeout,
              streamedRequestPaths,
            })) as unknown as http.Server,
    },
  });
  app.addHook("onRequest", async (req, reply) => {
    bracketIpv6Authority(req.raw.headers);
    dropFarDeadline(req.raw.headers);
    // As RFC 9112 (3.2) has a server answer a Host that is not valid.
    if (!settleAuthority(req.raw.headers)) {
      return reply.code(400).send({ error: "Host is not a valid authority" });
    }
  });
  let draining = false;
  app.addHook("preClose", async () => {
    draining = true;
  });

  // Each registration, to make again on the in-memory router (same implementations).
  const replays: ((router: ConnectRouter) => void)[] = [];
  const routes = (router: ConnectRouter) => {
    const recording = recordServices(router, fastMethods, replays);
    options.routes(recording);
    const services = [...new Set(router.handlers.map((h) => h.service))];
    // errors.proto too: no service's file imports it, but its messages are
    // the typed details of their errors, which a client then can decode.
    const files: DescFile[] = [
      ...new Set(services.map((s) => s.file)),
      file_chat_v1_errors,
      Health.file,
    ];
    recording.service(
      Health,
      createHealthService({
        services: services.map((s) => s.typeName),
        draining: () => draining,
        ...(options.readyChecks ? { readyChecks: options.readyChecks } : {}),
      }),
    );
    registerReflection(router, files, [...services.map((s) => s.typeName), Health.typeName]);
    for (const handler of router.handlers) {
      const kind = handler.method.methodKind;
      if (kind === "client_streaming" || kind === "bidi_streaming") {
        streamedRequestPaths.add(handler.requestPath);
      }
    }
  };
  const routerInterceptors = [...interceptors, createTraceServerInterceptor()];
  // Calls still running SHUTDOWN_TIMEOUT_MS after close began are aborted
  // through this signal (as the plugin's own shutdownTimeoutMs would do).
  // Every call in flight listens to it and stops listening when it ends:
  // unlimited listeners, or the 11th call at once made Node print a
  // MaxListenersExceededWarning about a memory leak that is none.
  const shutdown = new AbortController();
  setMaxListeners(0, shutdown.signal);
  app.addHook("preClose", (done) => {
    // Unref'd: a server closed in time does not hold its process open.
    setTimeout(() => shutdown.abort(), config.shutdownTimeoutMs).unref();
    done();
  });
  await app.register(fastifyConnectPlugin, {
    routes,
    readMaxBytes: config.maxRequestBytes,
    interceptors: routerInterceptors,
    shutdownSignal: shutdown.signal,
    // The trace the request's log line has (continued from traceparent, or
    // new): a call without traceparent logs one trace id, not two.
    contextValues: (req) => createContextValues().set(traceKey, req.trace),
  });
  localServices.set(app, {
    invoker,
    logger,
    // Made only for a component of the same process, which most processes never have.
    streams: (callerInterceptors) =>
      createRouterTransport(
        (r) => {
          for (const replay of replays) replay(r);
        },
        {
          transport: { interceptors: [...callerInterceptors] },
          router: { interceptors: routerInterceptors, readMaxBytes: config.maxRequestBytes },
        },
      ),
  });
  return app;
}
