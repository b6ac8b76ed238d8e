import { type Logger, pino } from "pino";
import type { CommonConfig } from "./config.js";

export type { Logger } from "pino";

/**
 * The process logger: pino JSON lines on stdout, one field `service` naming
 * the process so merged output stays readable.
 */
export function createLogger(service: string, level: CommonConfig["logLevel"]): Logger {
  return pino({ level, base: { service }, timestamp: pino.stdTimeFunctions.isoTime });
}
