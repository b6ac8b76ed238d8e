import { Code, ConnectError } from "@connectrpc/connect";
import { refusedStream } from "../lib/refused-stream-retry.js";
import { traceCallOptions, traceLogFields } from "../lib/trace.js";
import {
  type AdmittedChat,
  type ChatDeps,
  type ChatInput,
  failedCall,
  modelRequest,
  refund,
  settle,
} from "./chat.js";
import type { HttpError } from "./errors.js";
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
  | {
      readonly outcome: "llm failed";
      /** How the failure is answered before the reply starts (500 `llm failed`, or 400 `text too long`). */
      readonly error: HttpError;
    }
  | { readonly outcome: "client gone" | "client too slow" };

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
 * A client still taking a piece when the deadline (`deps.llmTimeoutMs`)
 * comes is "client too slow": the call is cancelled, the charge stays as
 * for a client gone, and the caller closes the connection.
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
  // Cancels the model call when the client is cut off for reading too slowly.
  const cut = new AbortController();
  const call = eitherSignal(signal, deps.stopping, cut.signal);
  // The model's deadline is kept here, the call's a grace later: a deadline
  // that finds the relay waiting on the client is the client's doing.
  const deadline =
    deps.llmTimeoutMs === undefined
      ? undefined
      : deadlineOf(deps.llmTimeoutMs, () =>
          cut.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
        );
  let tooSlow = false;
  try {
    const pieces = openedAgainIfRefused(() =>
      deps.upstreams.llm.generateStream(modelRequest(input, cleaned), {
        signal: call.signal,
        ...(deps.llmTimeoutMs !== undefined && {
          timeoutMs: deps.llmTimeoutMs + deadlineGraceMs,
        }),
        ...traceCallOptions(deps.trace),
      }),
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
      const sent = onDelta(piece.delta, model);
      // A piece taken at once settles before any timer can fire: the deadline
      // finds only a write still waiting on the client at its instant, and
      // gives it a grace to finish (a big frame in transit to a prompt
      // client); past the deadline, every write has that grace.
      if (deadline === undefined) await sent;
      else if ((await deadline.race(sent)) === deadlineReached) {
        tooSlow = true;
        // Cancelled before the loop lets go of the call, which may wait for it otherwise.
        cut.abort(new ConnectError("the client reads too slowly", Code.Canceled));
        break;
      }
    }
  } catch (err) {
    if (signal.aborted) return clientGone(deps, chat, reply);
    // Past a deadline that found the client holding the stream back, the
    // model's end is not its failure.
    tooSlow ||= deadline?.heldByClient === true;
    if (!tooSlow) {
      const error = failedCall(deps.logger, "llm", err, deps.trace);
      await refund(deps, input.userId, requestId);
      return { outcome: "llm failed", error };
    }
  } finally {
    call.unlink();
    deadline?.clear();
  }
  if (tooSlow) return cutOff(deps, chat, reply);
  if (signal.aborted) return clientGone(deps, chat, reply);
  const remaining = await settle(deps, input.userId, requestId, () =>
    chatUsage(chat.admitted.prompt, reply, reportedUsage),
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
 * The pieces of `open()`'s stream; a stream the service refused unrun (an
 * HTTP/2 REFUSED_STREAM: it drains on SIGTERM, and its GOAWAY crossed the
 * call) is opened once more, on a new connection: behind a Kubernetes
 * Service, another replica.
 */
export async function* openedAgainIfRefused<T>(open: () => AsyncIterable<T>): AsyncIterable<T> {
  let received = false;
  try {
    for await (const piece of open()) {
      received = true;
      yield piece;
    }
  } catch (err) {
    if (received || !refusedStream(err)) throw err;
    yield* open();
  }
}

export const deadlineReached = Symbol("deadline reached");

/** How long a write the deadline finds waiting on the client still has to finish. */
const deadlineGraceMs = 2_000;

/**
 * The stream's stall limit (openSseStream's `stallLimitMs`) for a model
 * deadline: a write waiting on the client this long closes the connection,
 * the frames after the reply (`done`) too. Past the deadline's grace, so a
 * reply still running is cut off by relayReply first, as "client too slow".
 */
export function stallLimitOf(llmTimeoutMs: number | undefined): number | undefined {
  return llmTimeoutMs === undefined ? undefined : llmTimeoutMs + deadlineGraceMs;
}

/**
 * A stream's model deadline, `ms` from now. If it comes while the relay
 * waits on the model, `expire` is called (the model is late); if it comes
 * while a write waits on the client, the client is holding the stream back
 * (`heldByClient`). `race` settles with what a write settles with, or with
 * deadlineReached when it is still pending a grace after the deadline. One
 * timer a stream, and no reaction left on anything per piece.
 */
export function deadlineOf(
  ms: number,
  expire: () => void,
): {
  readonly heldByClient: boolean;
  race(sent: Promise<void>): Promise<undefined | typeof deadlineReached>;
  clear(): void;
} {
  let passed = false;
  let heldByClient = false;
  /** Starts the grace of the write under way, if any. */
  let waiting: (() => void) | undefined;
  const timer = setTimeout(() => {
    passed = true;
    if (waiting === undefined) return expire();
    heldByClient = true;
    waiting();
  }, ms);
  return {
    get heldByClient() {
      return heldByClient;
    },
    race(sent) {
      return new Promise((resolve) => {
        let grace: NodeJS.Timeout | undefined;
        const startGrace = () => {
          grace = setTimeout(() => resolve(deadlineReached), deadlineGraceMs);
        };
        if (passed) startGrace();
        else waiting = startGrace;
        void sent.then(() => {
          waiting = undefined;
          clearTimeout(grace);
          resolve(undefined);
        });
      });
    },
    clear: () => clearTimeout(timer),
  };
}

/**
 * A signal that aborts when any of `given` does, and `unlink` to call
 * once it is no longer needed. Not AbortSignal.any: on Node 20 the gateway's
 * lifelong `stopping` signal keeps every signal made from it for good
 * (nodejs/node#55351): ~2 KB per streamed chat measured alone
 * (test/fixtures/either-signal-footprint.ts), ~58 bytes in the gateway.
 */
export function eitherSignal(...given: readonly (AbortSignal | undefined)[]): {
  readonly signal: AbortSignal;
  unlink(): void;
} {
  const signals = given.filter((s): s is AbortSignal => s !== undefined);
  if (signals.length === 1) return { signal: signals[0] as AbortSignal, unlink: () => {} };
  const either = new AbortController();
  const aborted = signals.find((s) => s.aborted);
  if (aborted !== undefined) either.abort(aborted.reason);
  const onAbort = (event: Event) => either.abort((event.target as AbortSignal).reason);
  if (aborted === undefined) {
    for (const s of signals) s.addEventListener("abort", onAbort, { once: true });
  }
  return {
    signal: either.signal,
    unlink() {
      for (const s of signals) s.removeEventListener("abort", onAbort);
    },
  };
}

/**
 * The client was still taking a piece when the deadline came: the model did
 * not fail, so the charge stays as for a client gone (the caller closes the
 * connection).
 */
async function cutOff(deps: ChatDeps, chat: StreamingChat, relayed: string): Promise<RelayOutcome> {
  deps.logger.warn(
    { ...traceLogFields(deps.trace), deadlineMs: deps.llmTimeoutMs },
    "stream cut off: the client was still taking its reply at the deadline; charge kept",
  );
  await clientGone(deps, chat, relayed);
  return { outcome: "client too slow" };
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
    chatUsage(chat.admitted.prompt, relayed, undefined),
  );
  return { outcome: "client gone" };
}
