import { setTimeout as sleep } from "node:timers/promises";
import type { LlmBackend } from "./backend.js";

export interface EchoBackendOptions {
  /** Wait this long before answering (ECHO_DELAY_MS); the wait ends early on abort. */
  readonly delayMs?: number;
}

/** The seed's stub model: replies "Echo: " + text. */
export function createEchoBackend(options: EchoBackendOptions = {}): LlmBackend {
  const delayMs = options.delayMs ?? 0;
  return {
    name: "echo",
    async generate(request, signal) {
      if (delayMs > 0) await sleep(delayMs, undefined, { signal });
      return { reply: `Echo: ${request.text}` };
    },
  };
}
