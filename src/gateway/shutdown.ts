import type { CallOptions, Client } from "@connectrpc/connect";
import type { LLMService } from "../../gen/chat/v1/llm_pb.js";

/**
 * The LLM client, its calls also cancelled when `stop` aborts. At shutdown
 * the gateway aborts `stop` while there is still time to give the charges of
 * the chats in flight back and answer them (500 `llm failed`, or a stream's
 * `error` event), instead of being killed with them charged. A stream's own
 * signal (its client leaving) is kept apart: only that one means "client
 * gone".
 */
export function cancelledAtShutdown(
  llm: Client<typeof LLMService>,
  stop: AbortSignal,
): Client<typeof LLMService> {
  return {
    ...llm,
    generate(request, options?: CallOptions) {
      if (options?.signal === undefined) return llm.generate(request, { ...options, signal: stop });
      return withBoth(options.signal, stop, (signal) =>
        llm.generate(request, { ...options, signal }),
      );
    },
    async *generateStream(request, options?: CallOptions) {
      const both = joined(options?.signal, stop);
      try {
        yield* llm.generateStream(request, { ...options, signal: both.signal });
      } finally {
        both.release();
      }
    },
  };
}

/** One signal that aborts when `a` or `b` does, and the way to stop listening to them. */
function joined(a: AbortSignal | undefined, b: AbortSignal) {
  if (a === undefined) return { signal: b, release: () => {} };
  const controller = new AbortController();
  const abortA = () => controller.abort(a.reason);
  const abortB = () => controller.abort(b.reason);
  if (a.aborted) abortA();
  else if (b.aborted) abortB();
  a.addEventListener("abort", abortA, { once: true });
  b.addEventListener("abort", abortB, { once: true });
  return {
    signal: controller.signal,
    release() {
      a.removeEventListener("abort", abortA);
      b.removeEventListener("abort", abortB);
    },
  };
}

async function withBoth<T>(
  a: AbortSignal,
  b: AbortSignal,
  call: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const both = joined(a, b);
  try {
    return await call(both.signal);
  } finally {
    both.release();
  }
}
