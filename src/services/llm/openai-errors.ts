import { Code, ConnectError } from "@connectrpc/connect";
import { APIConnectionError, APIConnectionTimeoutError, APIError } from "openai";
import { PromptTooLongSchema, UnsupportedParameterSchema } from "../../../gen/chat/v1/errors_pb.js";
import { causesOf } from "../../lib/causes.js";

/** What a failed model call is judged by besides the error itself. */
export interface FailedCall {
  /** The RPC's own signal: aborted when its caller left or its deadline passed. */
  readonly caller: AbortSignal;
  /** True when LLM_TIMEOUT_MS ran out first. */
  readonly timedOut: boolean;
  readonly timeoutMs: number;
  /** True when the call carried a response_format (JSON, of a schema or not). */
  readonly askedFormat?: boolean;
}

/** The facts of a failed model call that are safe to log (secrets removed). */
export interface UpstreamFailure {
  readonly status: number | undefined;
  readonly type: string | undefined;
  readonly code: string | undefined;
  readonly message: string;
}

/** What looks like a key, and what it is replaced with. */
const secretShapes: readonly (readonly [RegExp, string])[] = [
  [/\bsk-[A-Za-z0-9_*-]+/g, "sk-[redacted]"],
  [/\bBearer\s+\S+/gi, "Bearer [redacted]"],
  [/(api[_-]?key["'=:\s]+)[^\s"',}]+/gi, "$1[redacted]"],
  // The user info of a URL (fetch quotes a URL it refuses whole).
  [/(\b[a-z][a-z0-9+.-]*:\/\/)[^\s/?#@]+@/gi, "$1[redacted]@"],
];

/**
 * Removes the API key, and anything shaped like one, from a text the model
 * server sent back (OpenAI echoes part of a wrong key in its 401 message).
 */
export function redactSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) if (secret !== "") out = out.replaceAll(secret, "[redacted]");
  for (const [shape, replacement] of secretShapes) out = out.replace(shape, replacement);
  return out;
}

/**
 * The most characters of a model server's words kept in a log line: an
 * error page (a proxy's HTML, a server's stack trace) may run to megabytes,
 * logged again for every failed call.
 */
export const maxLoggedChars = 2_000;

/** `text` with secrets removed, cut to maxLoggedChars (after, so no key is cut in half). */
function loggable(text: string, secrets: readonly string[]): string {
  const clean = redactSecrets(text, secrets);
  return clean.length <= maxLoggedChars ? clean : `${clean.slice(0, maxLoggedChars)}… (cut)`;
}

/**
 * What an error says with what caused it: the SDK's "Connection error." alone
 * does not tell a refused connection from an unknown host or a bad certificate.
 */
function messageWithCauses(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const parts: string[] = [];
  for (const at of causesOf(err)) {
    const code = (at as NodeJS.ErrnoException).code;
    const part =
      typeof code === "string" && !at.message.includes(code)
        ? `${at.message} (${code})`
        : at.message;
    if (part !== "" && !parts.includes(part)) parts.push(part);
  }
  return parts.join(": ");
}

/** What the model server said about a failure, with secrets removed. */
export function describeFailure(err: unknown, secrets: readonly string[]): UpstreamFailure {
  const clean = (value: unknown) =>
    typeof value === "string" ? loggable(value, secrets) : undefined;
  if (err instanceof APIError) {
    const body = (err.error ?? {}) as Record<string, unknown>;
    return {
      status: err.status,
      type: clean(body.type),
      code: clean(body.code),
      message: loggable(messageWithCauses(err), secrets),
    };
  }
  return {
    status: undefined,
    type: undefined,
    code: undefined,
    message: loggable(messageWithCauses(err), secrets),
  };
}

/**
 * The model server ended a stream without a finish_reason: the reply was cut
 * off (a proxy timed out, the server died between writes), not whole.
 */
export class StreamCutOffError extends Error {
  override name = "StreamCutOffError";
}

/**
 * Finish reasons of a reply the model server did not complete: OpenRouter
 * ends a stream whose provider failed with "error" (the text so far, an
 * `error` beside it); "error" and "abort" are also vLLM's reasons for a
 * request that failed inside or that it aborted. Such a reply is no whole one.
 */
const failedFinishReasons: ReadonlySet<string> = new Set(["error", "abort"]);

/** Whether a reply that ended with `finishReason` was cut off by a failure. */
export const isFailedFinish = (finishReason: string | null | undefined): boolean =>
  typeof finishReason === "string" && failedFinishReasons.has(finishReason);

/** The model server ended a reply with a finish reason of failure (isFailedFinish). */
export class FailedFinishError extends Error {
  override name = "FailedFinishError";
  constructor(readonly finishReason: string) {
    super(`the reply ended with finish_reason ${finishReason}`);
  }
}

/** The model server answered 200 with no choice: no reply to give, and nothing to charge. */
export class NoChoiceError extends Error {
  override name = "NoChoiceError";
}

/** An answer (or one event of a stream) over the bytes the backend reads of one. */
export class AnswerTooLargeError extends Error {
  override name = "AnswerTooLargeError";
}

/**
 * Whether a model server refused the request for its `stream_options`, a
 * parameter some OpenAI-compatible servers and proxies do not know: 400 (or
 * a FastAPI server's 422) naming it, in `param` or only in its words
 * (Azure's older API versions: "Unrecognized request argument supplied:
 * stream_options").
 */
export function refusesStreamOptions(err: unknown): boolean {
  if (!(err instanceof APIError) || (err.status !== 400 && err.status !== 422)) return false;
  if (err.param === "stream_options") return true;
  // A refusal naming another parameter may quote the caller's words (a
  // schema's name, its properties'): it is no refusal of stream_options.
  if (typeof err.param === "string" && err.param !== "") return false;
  return JSON.stringify(err.error ?? err.message).includes("stream_options");
}

/**
 * Whether a model server's 400 refuses the request's response_format: its
 * `param` names it (OpenAI: "Invalid schema for response_format …", a type
 * the model does not support), or only its words do (json_object without
 * "json" in the messages, param `messages`; servers that give no param).
 */
function refusesResponseFormat(err: APIError): boolean {
  if (typeof err.param === "string" && err.param.startsWith("response_format")) return true;
  return err.message.includes("response_format");
}

/** `err`, or the first of its causes, that is an `E`. */
function foundIn<E extends Error>(err: unknown, type: new (...args: never[]) => E): E | undefined {
  for (const at of causesOf(err)) if (at instanceof type) return at;
  return undefined;
}

/** Codes of a connection that broke (undici's, Node's), found on an error or its causes. */
const brokenConnection = new Set([
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "ECONNRESET",
  "EPIPE",
  "ECONNREFUSED",
]);

/** Whether `err` (or what caused it) is a connection that broke mid-answer. */
export function isBrokenConnection(err: unknown): boolean {
  for (const at of causesOf(err)) {
    if (brokenConnection.has((at as NodeJS.ErrnoException).code ?? "")) return true;
  }
  return false;
}

/**
 * Whether a model server's 400 says the prompt does not fit the model's
 * context: OpenAI's code `context_length_exceeded`, llama.cpp server's type
 * `exceed_context_size_error`, vLLM's words ("This model's maximum context
 * length is …"). Not when its words say the room asked for the reply
 * (max_tokens) fills the context alone: no prompt would fit then
 * (LLM_MAX_TOKENS over the server's context, say), and the server as
 * configured is at fault, not the prompt.
 */
function isContextOverflow(err: APIError): boolean {
  const overflow =
    err.code === "context_length_exceeded" ||
    err.type === "exceed_context_size_error" ||
    /maximum context length/i.test(err.message);
  return overflow && !completionFillsContext(err.message);
}

/**
 * Whether a context overflow's message says the completion's tokens alone
 * reach the context length: vLLM's "'max_tokens' or 'max_completion_tokens'
 * is too large: N. This model's maximum context length is L tokens …", or
 * its (and OpenAI's former) "… maximum context length is L tokens. However,
 * you requested T tokens (P in the messages, N in the completion)".
 */
function completionFillsContext(message: string): boolean {
  const context = /maximum context length is (\d+)/i.exec(message)?.[1];
  const completion = (/is too large: (\d+)/i.exec(message) ??
    /(\d+) in the completion/i.exec(message))?.[1];
  return context !== undefined && completion !== undefined && Number(completion) >= Number(context);
}

/**
 * Turns a failed call to the model server into the gRPC error the LLM
 * service returns. The caller's own cancellation or deadline keeps its code;
 * our timeout is DEADLINE_EXCEEDED; what may pass on a retry (connection
 * failures, 429, 5xx, an error in the middle of a stream) is UNAVAILABLE;
 * a prompt longer than the model's context is INVALID_ARGUMENT with a
 * PromptTooLong detail (the caller's to shorten), a refused response_format
 * INVALID_ARGUMENT with an UnsupportedParameter detail; a refused key, a missing
 * model or a wrong URL (401, 403, 404) and any other 4xx are
 * FAILED_PRECONDITION: the request was valid here, and the
 * model server as configured (its key, model, limits) cannot take it, so the
 * gateway answers 500 `llm failed` as for any failing service, not 400 as
 * if the caller's request were wrong. Messages never carry the server's
 * words, so nothing it echoed (a key) goes further.
 */
export function connectErrorFromUpstream(err: unknown, call: FailedCall): ConnectError {
  if (call.caller.aborted) return ConnectError.from(call.caller.reason, Code.Canceled);
  if (call.timedOut || err instanceof APIConnectionTimeoutError) {
    return new ConnectError(
      `model server did not answer within LLM_TIMEOUT_MS (${call.timeoutMs} ms)`,
      Code.DeadlineExceeded,
    );
  }
  // Read from the body, it may come wrapped in the SDK's or undici's error.
  const tooLarge = foundIn(err, AnswerTooLargeError);
  if (tooLarge !== undefined) return new ConnectError(tooLarge.message, Code.ResourceExhausted);
  if (err instanceof APIConnectionError) {
    return new ConnectError("model server unreachable", Code.Unavailable);
  }
  // While a stream is read, undici's own error ("terminated"), not the SDK's.
  if (isBrokenConnection(err)) {
    return new ConnectError("model server connection lost", Code.Unavailable);
  }
  if (err instanceof StreamCutOffError) {
    return new ConnectError(
      "model server ended the stream before the reply was whole",
      Code.Unavailable,
    );
  }
  // An answer, or a stream's event, that is not JSON: a server or a proxy in
  // trouble, as when it answers no choice.
  if (err instanceof SyntaxError) {
    return new ConnectError("model server answered what is not JSON", Code.Unavailable);
  }
  if (err instanceof FailedFinishError) {
    return new ConnectError(
      `model server ended the reply with finish_reason ${err.finishReason}`,
      Code.Unavailable,
    );
  }
  if (err instanceof NoChoiceError) {
    return new ConnectError("model server answered no choice", Code.Unavailable);
  }
  if (err instanceof APIError) {
    const status = err.status as number | undefined;
    if (status === undefined) {
      return new ConnectError("model server reported an error in the stream", Code.Unavailable);
    }
    if (status === 429 || status >= 500) {
      return new ConnectError(`model server answered ${status}`, Code.Unavailable);
    }
    if (status === 400 && isContextOverflow(err)) {
      return new ConnectError(
        "model server refused the prompt as longer than the model's context",
        Code.InvalidArgument,
        undefined,
        [{ desc: PromptTooLongSchema, value: {} }],
      );
    }
    // The form asked (a schema OpenAI will not take: its root no object, a
    // strict one without additionalProperties false; JSON the model has not)
    // is the caller's to change, as for the echo stub.
    if (status === 400 && call.askedFormat === true && refusesResponseFormat(err)) {
      return new ConnectError(
        "model server refused the request's response_format",
        Code.InvalidArgument,
        undefined,
        [{ desc: UnsupportedParameterSchema, value: { param: "response_format" } }],
      );
    }
    if (status === 401 || status === 403 || status === 404) {
      return new ConnectError(
        `model server refused the call (${status}): check OPENAI_API_KEY, OPENAI_BASE_URL and LLM_MODEL`,
        Code.FailedPrecondition,
      );
    }
    return new ConnectError(
      `model server rejected the request (${status})`,
      Code.FailedPrecondition,
    );
  }
  return new ConnectError("model call failed", Code.Internal);
}
