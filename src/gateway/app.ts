import { randomUUID } from "node:crypto";
import type { FastifyError, FastifyInstance } from "fastify";
import type { GatewayConfig } from "../lib/config.js";
import { createHttpApp } from "../lib/http-app.js";
import type { Logger } from "../lib/logger.js";
import { type ReadyCheck, registerHealthRoutes } from "../lib/readiness.js";
import { parseChatInput, runChat } from "./chat.js";
import type { HttpError } from "./errors.js";
import { registerHistory } from "./history.js";
import type { Upstreams } from "./upstreams.js";

export interface GatewayDeps {
  readonly config: GatewayConfig;
  readonly logger: Logger;
  readonly upstreams: Upstreams;
  /** What `/readyz` checks: the upstream services. */
  readonly readyChecks?: Readonly<Record<string, ReadyCheck>>;
}

const isHttpError = (value: object): value is HttpError => "status" in value;

/** Turns Fastify's own request errors into the contract's bodies. */
function errorResponse(err: FastifyError): HttpError {
  switch (err.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return { status: 413, body: { error: "request body too large" } };
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return { status: 415, body: { error: "content-type must be application/json" } };
  }
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) {
    return { status: 400, body: { error: "bad json or missing user_id" } };
  }
  return { status: 500, body: { error: "internal error" } };
}

/**
 * Builds the HTTP gateway (not listening): POST /chat, GET /history,
 * GET /health and /healthz. Every response carries `x-request-id`, made here (never taken
 * from the caller, because it is also the id the quota is charged under).
 */
export async function buildGateway(deps: GatewayDeps): Promise<FastifyInstance> {
  const { config, logger, upstreams } = deps;
  const app = createHttpApp(logger, {
    bodyLimit: config.maxBodyBytes,
    requestIdHeader: false,
    genReqId: () => randomUUID(),
  });
  // JSON only: every other content type, text/plain included, is a 415.
  app.removeContentTypeParser("text/plain");
  app.addHook("onRequest", async (req, reply) => {
    reply.header("x-request-id", req.id);
  });
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const { status, body } = errorResponse(err);
    if (status === 500) req.log.error({ err }, "unhandled error");
    return reply.code(status).send(body);
  });
  app.setNotFoundHandler((_req, reply) => reply.code(404).send({ error: "not found" }));

  const history = registerHistory(app, { client: upstreams.history, config });
  app.post("/chat", async (req, reply) => {
    const input = parseChatInput(req.body, config.maxTextChars);
    if (isHttpError(input)) return reply.code(input.status).send(input.body);
    const result = await runChat({ upstreams, logger: req.log, history }, input, req.id);
    if (isHttpError(result)) return reply.code(result.status).send(result.body);
    return result;
  });
  app.get("/health", async (_req, reply) => reply.type("text/plain").send("ok"));
  registerHealthRoutes(app, deps.readyChecks);
  return app;
}
