import type { FastifyInstance } from "fastify";
import { ConfigError } from "./config.js";
import type { Logger } from "./logger.js";
import { endOfHangup, hasControllingTerminal, hungUp, terminalStreams } from "./terminal.js";

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

/**
 * What a failed listen says about the configuration, as one line naming the
 * variable to change; undefined for any other failure.
 */
export function listenProblem(
  err: unknown,
  options: Pick<ListenOptions, "host" | "port" | "portEnv">,
): string | undefined {
  const { host, port, portEnv } = options;
  switch ((err as NodeJS.ErrnoException).code) {
    case "EADDRINUSE":
      return `port ${port} on ${host} is already in use (set ${portEnv} to move it)`;
    case "EACCES":
      return `port ${port} on ${host} needs privileges this process lacks (set ${portEnv} to a port from 1024)`;
    case "EADDRNOTAVAIL":
      return `HOST ${host} is not an address of this machine (set HOST to one, or 0.0.0.0 for all)`;
    case "ENOTFOUND":
    case "EAI_AGAIN":
    case "EAI_FAIL":
    case "EAI_NODATA":
      return `HOST ${host} cannot be resolved to an address (set HOST to an address or a known name)`;
    default:
      return undefined;
  }
}

/**
 * Listens on host:port; a taken or forbidden port or an unusable HOST stops
 * the start with one line naming the variable to change.
 */
export async function listen(app: FastifyInstance, options: ListenOptions): Promise<void> {
  const { host, port, logger } = options;
  try {
    await app.listen({ host, port });
  } catch (err) {
    const problem = listenProblem(err, options);
    if (problem !== undefined) throw new ConfigError(problem);
    throw err;
  }
  const address = app.server.address();
  const bound = typeof address === "object" && address !== null ? address.port : port;
  logger.info({ host, port: bound }, "listening");
}

/**
 * On SIGTERM or SIGINT, runs `close` (which lets in-flight requests finish),
 * then exits; past `shutdownTimeoutMs` it exits anyway. A SIGHUP someone
 * sends reloads the files that reload (the filter's terms, the gateway's API
 * keys: their own listeners); where nothing does, it is logged and the
 * process serves on. (Node's default, to exit at once without draining, lost
 * the chats waiting for the history and the refunds waiting for a retry.)
 * Only the SIGHUP of the process's controlling terminal closing (its
 * standard streams are a terminal no more) stops it, as SIGTERM does:
 * serving on, it wrote its logs to nothing and held its port, with no
 * terminal left to stop it from.
 */
export function closeOnSignals(
  close: () => Promise<void>,
  options: { readonly shutdownTimeoutMs: number; readonly logger: Logger },
): void {
  const { logger } = options;
  let stopping = false;
  const exit = (code: number) => {
    // Node's exit aborts when it cannot reset a terminal that hung up: the
    // process ends of the hang-up instead, as it did before it took SIGHUP.
    if (terminalGone) endOfHangup();
    process.exit(code);
  };
  const stop = (signal: NodeJS.Signals | "parent gone") => {
    // SIGINT of a terminal's Ctrl-C and run-all's SIGTERM both come.
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    const timer = setTimeout(() => {
      logger.warn(
        { timeoutMs: options.shutdownTimeoutMs },
        "shutdown timed out; closing connections",
      );
      exit(1);
    }, options.shutdownTimeoutMs);
    timer.unref();
    close().then(
      () => exit(0),
      (err: unknown) => {
        logger.error({ err }, "shutdown failed");
        exit(1);
      },
    );
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
  ignoreHangup(logger);
  onTerminalGone = () => stop("SIGHUP");
  if (terminalGone) stop("SIGHUP");
  // Started by run-all, which holds this process's stdin open: once run-all
  // is gone, however it ended (kill -9 too), the pipe ends and so does this.
  if (process.env[parentPipeEnv] === "1") {
    process.stdin.once("end", () => stop("parent gone"));
    process.stdin.resume();
  }
}

let hangupLogger: Logger | undefined;
// The standard streams that were a terminal when the process began.
let terminalFds: readonly number[] | undefined;
// Whether that terminal hung up: once closed, a terminal is no longer one.
let terminalGone = false;
let onTerminalGone: (() => void) | undefined;
const onHangup = () => {
  if (!terminalGone && terminalFds !== undefined && hungUp(terminalFds)) {
    // Stopped once serving (closeOnSignals); during start-up, as soon as it serves.
    terminalGone = true;
    onTerminalGone?.();
    return;
  }
  // Alone, it is all there is: nothing in the process reloads.
  if (process.listenerCount("SIGHUP") === 1) {
    hangupLogger?.info({ signal: "SIGHUP" }, "nothing to reload; still serving");
  }
};

/**
 * Keeps SIGHUP from stopping the process (Node's default: exit at once),
 * from the start of its start-up (a database's migration, say) on; with a
 * logger, a SIGHUP that nothing reloads on is logged; a SIGHUP of the
 * process's terminal closing stops it (see closeOnSignals). Idempotent.
 */
export function ignoreHangup(logger?: Logger): void {
  terminalFds ??= hasControllingTerminal() ? terminalStreams() : [];
  if (logger !== undefined) hangupLogger = logger;
  if (!process.listeners("SIGHUP").includes(onHangup)) process.on("SIGHUP", onHangup);
}

/** Set by run-all for its processes: their stdin is a pipe it holds open while it runs. */
export const parentPipeEnv = "CHATMESH_PARENT_PIPE";

/**
 * Listens, and closes the app gracefully on SIGTERM or SIGINT: in-flight
 * requests get up to `shutdownTimeoutMs` to finish, then the process exits.
 */
export async function serve(app: FastifyInstance, options: ServeOptions): Promise<void> {
  await listen(app, options);
  closeOnSignals(() => app.close(), options);
}
