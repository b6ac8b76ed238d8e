import { type Logger, pino } from "pino";
import type { CommonConfig } from "./config.js";
import { currentTrace, traceLogFields } from "./trace.js";

export type { Logger } from "pino";

/**
 * The process logger: pino JSON lines on stdout with `service` naming the
 * process, and `trace_id` / `request_id` on every line written while a
 * request is being handled.
 */
export function createLogger(service: string, level: CommonConfig["logLevel"]): Logger {
  return pino({
    level,
    base: { service },
    timestamp: pino.stdTimeFunctions.isoTime,
    mixin: () => traceLogFields(currentTrace()),
  });
}
