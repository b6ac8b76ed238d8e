import type { FastifyInstance } from "fastify";
import { ConfigError } from "./config.js";
import type { Logger } from "./logger.js";

export interface ListenOptions {
  readonly host: string;
  readonly port: number;
  /** The variable that moves the port, named when the port is taken. */
  readonly portEnv: string;
  readonly logger: Logger;
}

export interface ServeOptions extends ListenOptions {
  readonly shutdownTimeoutMs: number;
}

/** Listens on host:port; a taken port stops the start with one line naming its variable. */
export async function listen(app: FastifyInstance, options: ListenOptions): Promise<void> {
  const { host, port, portEnv, logger } = options;
  try {
    await app.listen({ host, port });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EADDRINUSE") {
      throw new ConfigError(
        `port ${port} on ${host} is already in use (set ${portEnv} to move it)`,
      );
    }
    throw err;
  }
  const address = app.server.address();
  const bound = typeof address === "object" && address !== null ? address.port : port;
  logger.info({ host, port: bound }, "listening");
}

/**
 * On SIGTERM or SIGINT, runs `close` (which lets in-flight requests finish),
 * then exits; past `shutdownTimeoutMs` it exits anyway.
 */
export function closeOnSignals(
  close: () => Promise<void>,
  options: { readonly shutdownTimeoutMs: number; readonly logger: Logger },
): void {
  const { logger } = options;
  const stop = (signal: NodeJS.Signals) => {
    logger.info({ signal }, "shutting down");
    const timer = setTimeout(() => {
      logger.warn(
        { timeoutMs: options.shutdownTimeoutMs },
        "shutdown timed out; closing connections",
      );
      process.exit(1);
    }, options.shutdownTimeoutMs);
    timer.unref();
    close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}

/**
 * Listens, and closes the app gracefully on SIGTERM or SIGINT: in-flight
 * requests get up to `shutdownTimeoutMs` to finish, then the process exits.
 */
export async function serve(app: FastifyInstance, options: ServeOptions): Promise<void> {
  await listen(app, options);
  closeOnSignals(() => app.close(), options);
}
