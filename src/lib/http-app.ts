import {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyServerOptions,
  fastify,
  LogController,
} from "fastify";
import type { Logger } from "./logger.js";

/**
 * A Fastify app with the house logging: the process's pino logger, and one
 * line per request (route, status, duration) instead of Fastify's two.
 */
export function createHttpApp(
  logger: Logger,
  options: Omit<FastifyServerOptions, "logger" | "loggerInstance" | "logController"> = {},
): FastifyInstance {
  const app = fastify({
    ...options,
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
  }) as unknown as FastifyInstance;
  app.addHook("onResponse", async (req, reply) => {
    req.log.info(
      {
        method: req.method,
        route: req.routeOptions.url ?? "unmatched",
        status: reply.statusCode,
        ms: Math.round(reply.elapsedTime * 10) / 10,
      },
      "request",
    );
  });
  return app;
}
