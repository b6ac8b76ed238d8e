import { EventEmitter } from "node:events";
import { isatty } from "node:tty";
import { type Logger, pino } from "pino";
import type { CommonConfig } from "./config.js";

export type { Logger } from "pino";

/**
 * The process logger: pino JSON lines on stdout with `service` naming the
 * process. Lines about a request carry its `trace_id` and `request_id`
 * (`traceLogFields`), put there by the code that writes them: the trace is
 * passed along explicitly, never kept in AsyncLocalStorage, whose async hooks
 * cost Node 20 some 12–18 % of the gateway's CPU per chat.
 */
export function createLogger(service: string, level: CommonConfig["logLevel"]): Logger {
  const logger = pino({
    level,
    base: { service },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
  // A file or a pipe failing with EIO (a failing disk) is an error to see.
  if (isatty(1)) {
    quietOnHangUp((logger as unknown as Record<symbol, unknown>)[pino.symbols.streamSym]);
  }
  return logger;
}

/**
 * Has pino's stdout stop writing once its terminal has hung up (closed, an
 * SSH session dropped), as it stops on a closed pipe (EPIPE): every write to
 * such a terminal fails with EIO, which pino passed on as an unhandled
 * error, and its flush at exit then retried for ever, so the process hung,
 * holding its port, deaf to SIGTERM. Other errors are thrown as before.
 */
function quietOnHangUp(stream: unknown): void {
  if (!(stream instanceof EventEmitter) || !("flushSync" in stream)) return;
  const writes = stream as unknown as Record<"write" | "end" | "flushSync" | "destroy", unknown>;
  stream.on("error", (err: NodeJS.ErrnoException) => {
    // pino's own listener has already silenced the stream on EPIPE.
    if (err.code === "EPIPE") return;
    if (err.code !== "EIO") throw err;
    const ignore = () => {};
    writes.write = () => true;
    writes.end = ignore;
    writes.flushSync = ignore;
    writes.destroy = ignore;
  });
}
