import { traceCallOptions } from "../lib/trace.js";
import {
  type AdmittedChat,
  type ChatDeps,
  type ChatInput,
  failedCall,
  refund,
  settle,
} from "./chat.js";
import { type ChatUsage, chatUsage } from "./quota-cost.js";

/** How a streamed reply ended. */
export type RelayOutcome =
  | {
      readonly outcome: "ok";
      readonly reply: string;
      /** The model that answered. */
      readonly model: string;
      readonly finishReason: string;
      readonly reportedUsage: ChatUsage | undefined;
      /** What is left of the quota once the charge was settled (tokens mode). */
      readonly remaining: number | undefined;
    }
  | { readonly outcome: "llm failed" | "client gone" };

/** A chat admitted and about to be answered in pieces. */
export interface StreamingChat {
  readonly input: ChatInput;
  readonly admitted: AdmittedChat;
  readonly requestId: string;
}

/**
 * What /chat/stream and /v1/chat/completions (stream: true) share: relays
 * the model's reply piece by piece to `onDelta` (with the model's name),
 * gives the charge back when the model fails, and settles it to the chat's
 * usage once the reply is whole. `signal` aborts when the client goes away;
 * the model call is cancelled then and the charge stays (settled, in tokens
 * mode, to the prompt and the part of the reply relayed). A client gone
 * before the model call gets no call and the charge back. A call cancelled
 * because the gateway stops (`deps.stopping`) fails as the model failing.
 */
export async function relayReply(
  deps: ChatDeps,
  chat: StreamingChat,
  signal: AbortSignal,
  onDelta: (text: string, model: string) => Promise<void>,
): Promise<RelayOutcome> {
  const { input, requestId } = chat;
  const { cleaned } = chat.admitted;
  let reply = "";
  let model = "";
  let finishReason = "";
  let reportedUsage: ChatUsage | undefined;
  // Gone while Filter and Token ran: no model call is opened for nobody, and
  // the charge, for which nothing was done, is given back.
  if (signal.aborted) {
    await refund(deps, input.userId, requestId);
    return { outcome: "client gone" };
  }
  const call = eitherSignal(signal, deps.stopping);
  try {
    const pieces = deps.upstreams.llm.generateStream(
      { text: cleaned, userId: input.userId, maxTokens: input.maxTokens ?? 0 },
      { signal: call.signal, ...traceCallOptions(deps.trace) },
    );
    for await (const piece of pieces) {
      model ||= piece.model;
      finishReason = piece.finishReason || finishReason;
      if (piece.usage !== undefined) {
        const { promptTokens, completionTokens, totalTokens } = piece.usage;
        reportedUsage = { promptTokens, completionTokens, totalTokens };
      }
      if (piece.delta === "") continue;
      reply += piece.delta;
      await onDelta(piece.delta, model);
    }
  } catch (err) {
    if (signal.aborted) return clientGone(deps, chat, reply);
    failedCall(deps.logger, "llm", err, deps.trace);
    await refund(deps, input.userId, requestId);
    return { outcome: "llm failed" };
  } finally {
    call.unlink();
  }
  if (signal.aborted) return clientGone(deps, chat, reply);
  const remaining = await settle(deps, input.userId, requestId, () =>
    chatUsage(cleaned, reply, reportedUsage),
  );
  return {
    outcome: "ok",
    reply,
    model,
    finishReason: finishReason || "stop",
    reportedUsage,
    remaining,
  };
}

/**
 * A signal that aborts when `first` or `second` does, and `unlink` to call
 * once it is no longer needed. Not AbortSignal.any: on Node 20 the gateway's
 * lifelong `stopping` signal keeps every signal made from it for good
 * (nodejs/node#55351): ~2 KB per streamed chat measured alone
 * (test/fixtures/either-signal-footprint.ts), ~58 bytes in the gateway.
 */
export function eitherSignal(
  first: AbortSignal,
  second: AbortSignal | undefined,
): { readonly signal: AbortSignal; unlink(): void } {
  if (second === undefined) return { signal: first, unlink: () => {} };
  const either = new AbortController();
  const onFirst = () => either.abort(first.reason);
  const onSecond = () => either.abort(second.reason);
  if (first.aborted) onFirst();
  else if (second.aborted) onSecond();
  else {
    first.addEventListener("abort", onFirst, { once: true });
    second.addEventListener("abort", onSecond, { once: true });
  }
  return {
    signal: either.signal,
    unlink() {
      first.removeEventListener("abort", onFirst);
      second.removeEventListener("abort", onSecond);
    },
  };
}

/**
 * The client went away mid-reply: the charge stays, and in tokens mode it is
 * settled to what was used until then (the prompt and the reply relayed so
 * far, counted here: no usage comes for a cancelled call), not the whole
 * reservation.
 */
async function clientGone(
  deps: ChatDeps,
  chat: StreamingChat,
  relayed: string,
): Promise<RelayOutcome> {
  await settle(deps, chat.input.userId, chat.requestId, () =>
    chatUsage(chat.admitted.cleaned, relayed, undefined),
  );
  return { outcome: "client gone" };
}
