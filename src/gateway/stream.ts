import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import {
  type AdmittedChat,
  admitChat,
  type ChatDeps,
  type ChatInput,
  callOptionsFor,
  logFailure,
  parseChatInput,
  refund,
} from "./chat.js";
import type { HttpError } from "./errors.js";
import { openSseStream, type SseStream } from "./sse.js";
import type { Upstreams } from "./upstreams.js";

/** A streamed chat that reached `done`: what history keeps. */
export interface StreamedChat {
  readonly requestId: string;
  readonly userId: string;
  readonly cleaned: string;
  readonly reply: string;
}

/**
 * Called once a streamed chat is done, before the stream ends (so a client
 * that sees the end can read the chat back). This is where history saving
 * plugs in; an error thrown here is logged and does not reach the client,
 * who already has the whole reply.
 */
export type OnChatDone = (chat: StreamedChat) => Promise<void> | void;

export interface ChatStreamDeps {
  readonly upstreams: Upstreams;
  readonly maxTextChars: number;
  readonly onChatDone?: OnChatDone | undefined;
}

const isHttpError = (value: object): value is HttpError => "status" in value;

/**
 * Adds `POST /chat/stream` (contract, Streaming): the same body and the same
 * JSON errors as /chat while Filter and Token run; then `text/event-stream`
 * with `meta`, one or more `delta`, and `done` (or `error` when the model
 * fails, the charge then given back). A client that goes away cancels the
 * model call; the one charge already taken stays.
 */
export function registerChatStream(app: FastifyInstance, deps: ChatStreamDeps): void {
  app.post("/chat/stream", async (req, reply) => {
    const input = parseChatInput(req.body, deps.maxTextChars);
    if (isHttpError(input)) return reply.code(input.status).send(input.body);
    const chatDeps: ChatDeps = { upstreams: deps.upstreams, logger: req.log };
    const admitted = await admitChat(chatDeps, input, req.id);
    if (isHttpError(admitted)) return reply.code(admitted.status).send(admitted.body);

    reply.hijack();
    const sse = openSseStream(reply.raw, reply.getHeaders());
    await streamReply({ ...chatDeps, sse, onChatDone: deps.onChatDone }, input, admitted, req.id);
  });
}

interface StreamDeps extends ChatDeps {
  readonly sse: SseStream;
  readonly onChatDone?: OnChatDone | undefined;
}

async function streamReply(
  deps: StreamDeps,
  input: ChatInput,
  admitted: AdmittedChat,
  requestId: string,
): Promise<void> {
  const { sse, logger } = deps;
  const { cleaned } = admitted;
  await sse.send("meta", { cleaned, remaining: admitted.remaining });
  let reply = "";
  let deltas = 0;
  try {
    const pieces = deps.upstreams.llm.generateStream(
      { text: cleaned, userId: input.userId },
      { ...callOptionsFor(requestId), signal: sse.signal },
    );
    for await (const { delta } of pieces) {
      if (delta === "") continue;
      reply += delta;
      deltas++;
      await sse.send("delta", { text: delta });
    }
  } catch (err) {
    if (sse.signal.aborted) return clientGone(logger, deltas);
    logFailure(logger, "llm", err);
    await refund(deps, input.userId, requestId);
    await sse.send("error", { error: "llm failed" });
    sse.end();
    logger.info({ deltas, outcome: "error" }, "stream ended");
    return;
  }
  if (sse.signal.aborted) return clientGone(logger, deltas);
  await sse.send("done", { reply });
  await notifyDone(deps, { requestId, userId: input.userId, cleaned, reply });
  sse.end();
  logger.info({ deltas, outcome: "done" }, "stream ended");
}

function clientGone(logger: FastifyBaseLogger, deltas: number): void {
  logger.info({ deltas, outcome: "client gone" }, "stream ended: the client went away");
}

async function notifyDone(deps: StreamDeps, chat: StreamedChat): Promise<void> {
  if (deps.onChatDone === undefined) return;
  try {
    await deps.onChatDone(chat);
  } catch (err) {
    deps.logger.error({ err }, "onChatDone failed");
  }
}
