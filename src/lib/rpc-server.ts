import type http from "node:http";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import type { FastifyInstance } from "fastify";
import type { ServiceConfig } from "./config.js";
import { createDualProtocolServer, type DualHandler } from "./dual-protocol-server.js";
import { createHttpApp } from "./http-app.js";
import type { Logger } from "./logger.js";
import { type ReadyCheck, registerHealthRoutes } from "./readiness.js";

export interface RpcServerOptions {
  /** The process name, for logs. */
  readonly name: string;
  readonly config: ServiceConfig;
  readonly logger: Logger;
  /** Registers the service implementations on the Connect router. */
  readonly routes: (router: ConnectRouter) => void;
  readonly interceptors?: Interceptor[];
  /** What `/readyz` checks (a store, say); none means ready once listening. */
  readonly readyChecks?: Readonly<Record<string, ReadyCheck>>;
}

/**
 * Builds the Fastify app of an RPC service: Connect routes that speak gRPC,
 * gRPC-Web and Connect over HTTP/1.1 and cleartext HTTP/2 on one port, plus
 * `GET /healthz` and `GET /readyz`. Nothing listens until the caller calls `listen`.
 */
export async function createRpcServer(options: RpcServerOptions): Promise<FastifyInstance> {
  const { config, logger } = options;
  const app = createHttpApp(logger, {
    forceCloseConnections: "idle",
    // Fastify's types know one protocol per server; this one serves both.
    serverFactory: (handler) =>
      createDualProtocolServer(handler as DualHandler) as unknown as http.Server,
  });
  await app.register(fastifyConnectPlugin, {
    routes: options.routes,
    readMaxBytes: config.maxRequestBytes,
    interceptors: options.interceptors ?? [],
    shutdownTimeoutMs: config.shutdownTimeoutMs,
  });
  registerHealthRoutes(app, options.readyChecks);
  return app;
}
