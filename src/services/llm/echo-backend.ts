import { setTimeout as sleep } from "node:timers/promises";
import type { LlmBackend } from "./backend.js";

export interface EchoBackendOptions {
  /** Wait this long before answering (ECHO_DELAY_MS); the wait ends early on abort. */
  readonly delayMs?: number;
  /** Wait this long before each streamed piece (ECHO_CHUNK_DELAY_MS), so streaming shows. */
  readonly chunkDelayMs?: number;
}

/**
 * Cuts a text into words, each keeping the white space after it, so the
 * pieces joined give the text back exactly.
 */
export function splitWords(text: string): string[] {
  return text.split(/(?<=\s)(?=\S)/u).filter((piece) => piece !== "");
}

/** Waits, ending early on abort with the signal's reason (a ConnectError from Connect). */
async function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0) return signal.throwIfAborted();
  try {
    await sleep(ms, undefined, { signal });
  } catch (err) {
    signal.throwIfAborted();
    throw err;
  }
}

/** The seed's stub model: replies "Echo: " + text; streams it word by word. */
export function createEchoBackend(options: EchoBackendOptions = {}): LlmBackend {
  const delayMs = options.delayMs ?? 0;
  const chunkDelayMs = options.chunkDelayMs ?? 0;
  return {
    name: "echo",
    async generate(request, call) {
      // Without a delay the reply is at hand: an ended call drops it.
      if (delayMs > 0) await pause(delayMs, call.signal);
      return { reply: `Echo: ${request.text}` };
    },
    async *stream(request, signal) {
      await pause(delayMs, signal);
      for (const word of splitWords(`Echo: ${request.text}`)) {
        await pause(chunkDelayMs, signal);
        yield word;
      }
    },
  };
}
