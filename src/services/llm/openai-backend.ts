import type { ConnectError } from "@connectrpc/connect";
import OpenAI, { APIError } from "openai";
import type { CompletionUsage } from "openai/resources/completions";
import type { Logger } from "../../lib/logger.js";
import { traceLogFields } from "../../lib/trace.js";
import type {
  ContextMessage,
  LlmBackend,
  LlmRequest,
  LlmResponseFormat,
  LlmSampling,
  LlmUsage,
} from "./backend.js";
import { defaultMaxReplyBytes } from "./llm-service.js";
import {
  AnswerTooLargeError,
  connectErrorFromUpstream,
  describeFailure,
  FailedFinishError,
  isBrokenConnection,
  isFailedFinish,
  NoChoiceError,
  refusesStreamOptions,
  StreamCutOffError,
} from "./openai-errors.js";

export interface OpenAiBackendOptions {
  /** OPENAI_BASE_URL: the server's /v1 URL. */
  readonly baseUrl: string;
  /** OPENAI_API_KEY; empty sends no Authorization header (local servers). */
  readonly apiKey: string;
  /** LLM_MODEL. */
  readonly model: string;
  /** LLM_TIMEOUT_MS: most time one call may take, streaming included. */
  readonly timeoutMs: number;
  /**
   * Most bytes read of one answer, and of one event of a stream (`answerLimit`
   * of LLM_MAX_REPLY_BYTES, its default unless given): past it the call
   * fails as RESOURCE_EXHAUSTED without reading on.
   */
  readonly maxAnswerBytes?: number;
  readonly logger?: Logger;
}

/**
 * The most bytes of one answer the backend reads, for replies of at most
 * `maxReplyBytes` (LLM_MAX_REPLY_BYTES): room for the reply escaped in JSON
 * (up to 6 bytes a character), a reasoning model's reasoning beside it, and
 * the envelope. A larger answer is read no further: the SDK would hold it
 * whole, several times over while parsing it (a 500 MB answer took the
 * process past its heap), and a stream's one huge event costs time in the
 * square of its length to split.
 */
export const answerLimit = (maxReplyBytes: number): number => 8 * maxReplyBytes + 1_048_576;

/** The blank lines that end an event of a stream, as the SDK splits a stream into events. */
const eventEnds = ["\n\n", "\r\r", "\r\n\r\n"].map((end) => Buffer.from(end));

/** The offset just past the last event end in `bytes`, or -1 if none is there. */
function pastLastEventEnd(bytes: Buffer): number {
  let past = -1;
  for (const end of eventEnds) {
    const at = bytes.lastIndexOf(end);
    if (at !== -1) past = Math.max(past, at + end.length);
  }
  return past;
}

const doneMark = Buffer.from("[DONE]");
/** What may come before `[DONE]` in the event that ends a stream, and what ends that event. */
const beforeDone = /(?:\n\n|\r\r|\r\n\r\n)data: ?$/;
const afterDone = /^(?:\n\n|\r\r|\r\n\r\n)/;

/**
 * The offset just past the end of a `data: [DONE]` event in `bytes` (which
 * start at an event's end or before it), or -1 if none is there whole.
 */
function pastDoneEvent(bytes: Buffer): number {
  for (let at = bytes.indexOf(doneMark); at !== -1; at = bytes.indexOf(doneMark, at + 1)) {
    const before = bytes.toString("latin1", Math.max(0, at - 10), at);
    const after = afterDone.exec(bytes.toString("latin1", at + doneMark.byteLength, at + 10));
    if (beforeDone.test(before) && after !== null) {
      return at + doneMark.byteLength + after[0].length;
    }
  }
  return -1;
}

/**
 * `fetch` whose response bodies fail with AnswerTooLargeError once they pass
 * `maxBytes`: in all for an answer, in one event for an event stream. An
 * event stream ends at its `data: [DONE]` event, the response with it: the
 * SDK reads nothing after it, and a server (or a proxy) that leaves the
 * response open after it would have the call wait until LLM_TIMEOUT_MS and
 * fail a whole reply.
 */
function fetchWithin(maxBytes: number): typeof fetch {
  return async (input, init) => {
    const res = await fetch(input, init);
    if (res.body === null) return res;
    const stream = res.headers.get("content-type")?.includes("text/event-stream") === true;
    let counted = 0;
    /**
     * The last bytes before the chunk, where an event end or the `[DONE]`
     * event may begin; at first an event end, as the start of a stream is.
     */
    let tail = Buffer.from("\n\n");
    const limited = res.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          if (stream) {
            // A stream counts from its last event's end: its events may add up
            // to any size. Not from a line's: the SDK holds an event whole
            // (every line of it) until its blank line, copying it again with
            // each chunk.
            const seen = Buffer.concat([tail, chunk]);
            const done = pastDoneEvent(seen);
            if (done !== -1) {
              controller.enqueue(chunk.subarray(0, Math.max(0, done - tail.byteLength)));
              controller.terminate();
              return;
            }
            const past = pastLastEventEnd(seen);
            counted = past === -1 ? counted + chunk.byteLength : seen.byteLength - past;
            tail = Buffer.from(seen.subarray(Math.max(0, seen.byteLength - 24)));
          } else {
            counted += chunk.byteLength;
          }
          if (counted > maxBytes) {
            controller.error(
              new AnswerTooLargeError(
                `model server ${stream ? "sent an event" : "answered"} over ${maxBytes} bytes`,
              ),
            );
            return;
          }
          controller.enqueue(chunk);
        },
      }),
    );
    return new Response(limited, {
      status: res.status,
      statusText: res.statusText,
      headers: res.headers,
    });
  };
}

/**
 * The context as the model server is sent it. A developer message goes as a
 * system message: OpenAI takes the two alike (the newer models read a
 * system message as the developer's), while vLLM's and Ollama's chat
 * templates know only `system` and refuse `developer` (400).
 */
function messagesOf(context: readonly ContextMessage[] | undefined) {
  return (context ?? []).map(({ role, content }) => ({
    role: role === "developer" ? ("system" as const) : role,
    content,
  }));
}

/** The OpenAI API's names of the sampling parameters, by LlmSampling's. */
const samplingNameOf = {
  temperature: "temperature",
  topP: "top_p",
  stop: "stop",
  seed: "seed",
  presencePenalty: "presence_penalty",
  frequencyPenalty: "frequency_penalty",
  reasoningEffort: "reasoning_effort",
} as const satisfies Record<keyof LlmSampling, string>;
const samplingNames: ReadonlySet<string> = new Set(Object.values(samplingNameOf));

/** The sampling parameters asked for, by their OpenAI API names. */
function samplingParams(sampling: LlmSampling | undefined): [string, unknown][] {
  if (sampling === undefined) return [];
  return Object.entries(sampling)
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => [samplingNameOf[name as keyof LlmSampling], value]);
}

/** Most values of sampling parameters a backend remembers as refused (each caller may pick others). */
const maxRefusedValues = 256;

/** The response_format parameter of the OpenAI API for a form asked of the reply. */
function responseFormatParam(format: LlmResponseFormat) {
  return format.type === "json_object"
    ? { type: "json_object" as const }
    : {
        type: "json_schema" as const,
        json_schema: format.jsonSchema as { name: string; [key: string]: unknown },
      };
}

/** A token count as the usage message carries it (int32); undefined for anything else. */
const tokenCount = (value: unknown): number | undefined =>
  typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 2_147_483_647
    ? value
    : undefined;

/**
 * The usage a model server reported. A total it left out (or sent as null)
 * is the prompt's and the reply's counts together; a usage without both
 * counts, or with one that is no token count, is no usage (the gateway
 * counts the tokens itself then), never a chat of 0 tokens.
 */
function usageOf(usage: CompletionUsage | null | undefined): LlmUsage | undefined {
  if (!usage) return undefined;
  const promptTokens = tokenCount(usage.prompt_tokens);
  const completionTokens = tokenCount(usage.completion_tokens);
  if (promptTokens === undefined || completionTokens === undefined) return undefined;
  const totalTokens =
    usage.total_tokens === undefined || usage.total_tokens === null
      ? tokenCount(promptTokens + completionTokens)
      : tokenCount(usage.total_tokens);
  if (totalTokens === undefined) return undefined;
  return { promptTokens, completionTokens, totalTokens };
}

/**
 * A message's (or a delta's) content as text: a string as it is; an array
 * of parts, as Mistral's reasoning models send (a `thinking` part before the
 * `text`), as its text parts joined; anything else none.
 */
function contentText(content: unknown): string | undefined {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return undefined;
  let text = "";
  for (const part of content as unknown[]) {
    const { type, text: partText } = (part ?? {}) as { type?: unknown; text?: unknown };
    if (type === "text" && typeof partText === "string") text += partText;
  }
  return text;
}

/**
 * An LLM backend on any OpenAI-compatible chat completions server (OpenAI,
 * vLLM, Ollama, llama.cpp server) through the official `openai` SDK. The text
 * goes as the last user message, after the conversation before it (its
 * context) as given. The SDK retries nothing (the gateway's deadline
 * governs); each call ends at LLM_TIMEOUT_MS or when the RPC's signal aborts
 * (its caller left or its deadline passed), whichever comes first, and the
 * HTTP request to the server is aborted with it.
 */
export function createOpenAiBackend(options: OpenAiBackendOptions): LlmBackend {
  const { model, timeoutMs, logger } = options;
  const keyless = options.apiKey === "";
  // Every option is given, so the SDK reads none of its own environment variables.
  const client = new OpenAI({
    baseURL: options.baseUrl,
    // The SDK insists on a key; without one, the header it would make is removed.
    apiKey: keyless ? "unused" : options.apiKey,
    ...(keyless && { defaultHeaders: { Authorization: null } }),
    adminAPIKey: null,
    organization: null,
    project: null,
    webhookSecret: null,
    maxRetries: 0,
    timeout: timeoutMs,
    logLevel: "off",
    fetch: fetchWithin(options.maxAnswerBytes ?? answerLimit(defaultMaxReplyBytes)),
  });

  /** The call's signal: the RPC's, or LLM_TIMEOUT_MS if that comes first. */
  const deadline = (caller: AbortSignal, request: LlmRequest) => {
    const timeout = AbortSignal.timeout(timeoutMs);
    return {
      signal: AbortSignal.any([caller, timeout]),
      fail(err: unknown): ConnectError {
        const mapped = connectErrorFromUpstream(err, {
          caller,
          timedOut: timeout.aborted,
          timeoutMs,
          askedFormat: request.responseFormat !== undefined,
        });
        if (!caller.aborted) {
          logger?.warn(
            {
              ...traceLogFields(request.trace),
              upstream: describeFailure(err, [options.apiKey]),
              code: mapped.code,
            },
            `model server call failed: ${mapped.rawMessage}`,
          );
        }
        return mapped;
      },
    };
  };
  // OpenAI's newer models (o-series, gpt-5) refuse max_tokens and take
  // max_completion_tokens; vLLM, Ollama and llama.cpp take max_tokens. The
  // first refusal switches this backend to the other name for good.
  let tokensParam: "max_tokens" | "max_completion_tokens" = "max_tokens";
  // Sampling parameters the model refuses (OpenAI's reasoning models refuse
  // stop) are left out from the first refusal on, as a model server that
  // ignores them would. A value refused (temperature and top_p other than
  // their default; a reasoning_effort the model has not) is left out, that
  // value alone: another caller's value of the parameter may be one the
  // model takes. Some values are remembered, not all: callers pick them.
  const refused = new Set<string>();
  const refusedValues = new Set<string>();
  const valueKey = (name: string, value: unknown) => `${name}=${JSON.stringify(value)}`;
  const body = (request: LlmRequest, dropped?: ReadonlySet<string>) => {
    const sampling: Record<string, unknown> = {};
    for (const [name, value] of samplingParams(request.sampling)) {
      if (refused.has(name) || dropped?.has(name)) continue;
      if (refusedValues.size > 0 && refusedValues.has(valueKey(name, value))) continue;
      sampling[name] = value;
    }
    return {
      model,
      messages: [...messagesOf(request.context), { role: "user" as const, content: request.text }],
      ...(request.maxTokens !== undefined && { [tokensParam]: request.maxTokens }),
      ...sampling,
      ...(request.responseFormat !== undefined && {
        response_format: responseFormatParam(request.responseFormat),
      }),
    };
  };
  /** Whether the call is worth making again after `err`, having changed what is sent. */
  const adaptTo = (err: unknown, sent: Record<string, unknown>, dropped: Set<string>): boolean => {
    if (!(err instanceof APIError) || err.status !== 400 || typeof err.param !== "string") {
      return false;
    }
    const param = err.param;
    if (!(param in sent)) return false;
    // Only the parameter refused, not its value (too large, say).
    if (param === "max_tokens" && err.code === "unsupported_parameter") {
      if (tokensParam === "max_tokens") {
        tokensParam = "max_completion_tokens";
        logger?.info(
          { model },
          "the model server refuses max_tokens: sending max_completion_tokens",
        );
      }
      return true;
    }
    if (!samplingNames.has(param)) return false;
    if (err.code === "unsupported_value") {
      dropped.add(param);
      const key = valueKey(param, sent[param]);
      if (!refusedValues.has(key) && refusedValues.size < maxRefusedValues) {
        refusedValues.add(key);
        logger?.info(
          { model, param, value: sent[param] },
          `the model server refuses ${param}: not sending it`,
        );
      }
      return true;
    }
    if (err.code !== "unsupported_parameter") return false;
    if (!refused.has(param)) {
      refused.add(param);
      logger?.info({ model, param }, `the model server refuses ${param}: not sending it`);
    }
    return true;
  };
  /** Makes a call, again (a few times at most) after each refusal adaptTo answers. */
  const adapting = async <T>(
    request: LlmRequest,
    make: (sent: ReturnType<typeof body>) => Promise<T>,
  ): Promise<T> => {
    // What this call leaves out, whether or not later calls do.
    const dropped = new Set<string>();
    for (let attempt = 1; ; attempt++) {
      const sent = body(request, dropped);
      try {
        return await make(sent);
      } catch (err) {
        if (attempt > samplingNames.size || !adaptTo(err, sent, dropped)) throw err;
      }
    }
  };

  // Streams ask for the usage; a server that refuses stream_options is
  // asked once more without it, and from then on (the gateway counts the
  // tokens of its replies itself).
  let streamOptions = true;
  /** Opens a stream; asks once more without stream_options if the server refuses them. */
  const withStreamOptions = async <T>(open: (askUsage: boolean) => Promise<T>): Promise<T> => {
    const sent = streamOptions;
    try {
      return await open(sent);
    } catch (err) {
      if (!sent || !refusesStreamOptions(err)) throw err;
      if (streamOptions) {
        streamOptions = false;
        logger?.info(
          { model },
          "the model server refuses stream_options: streaming without them, usage counted by the gateway",
        );
      }
      return open(false);
    }
  };

  return {
    name: "openai",
    model,
    followsResponseFormat: true,
    async generate(request, caller) {
      const call = deadline(caller.signal, request);
      try {
        const res = await adapting(request, (sent) =>
          client.chat.completions.create(sent, { signal: call.signal }),
        );
        const choice = res.choices?.[0];
        if (choice === undefined) throw new NoChoiceError("no choice in the answer");
        if (isFailedFinish(choice.finish_reason)) throw new FailedFinishError(choice.finish_reason);
        return {
          // A model that declines answers its refusal instead of content.
          reply: contentText(choice.message?.content) ?? choice.message?.refusal ?? "",
          usage: usageOf(res.usage),
          finishReason: choice.finish_reason ?? undefined,
        };
      } catch (err) {
        throw call.fail(err);
      }
    },

    async *stream(request, signal) {
      const call = deadline(signal, request);
      let usage: LlmUsage | undefined;
      let finishReason: string | undefined;
      try {
        const chunks = await withStreamOptions((askUsage) =>
          adapting(request, (sent) =>
            client.chat.completions.create(
              {
                ...sent,
                stream: true,
                ...(askUsage && { stream_options: { include_usage: true } }),
              },
              { signal: call.signal },
            ),
          ),
        );
        for await (const chunk of chunks) {
          // A usage chunk may come without `choices` at all.
          const choice = chunk.choices?.[0];
          // A model that declines streams its refusal instead of content.
          const piece = contentText(choice?.delta?.content) || choice?.delta?.refusal;
          if (piece) yield piece;
          if (choice?.finish_reason) finishReason = choice.finish_reason;
          usage = usageOf(chunk.usage) ?? usage;
        }
        // The SDK ends a stream quietly when its signal aborts, or when the
        // server ends its response early: a cut-off reply must not pass for
        // a whole one. A whole one says why it ended (finish_reason).
        call.signal.throwIfAborted();
        if (finishReason === undefined) throw new StreamCutOffError("stream ended early");
        if (isFailedFinish(finishReason)) throw new FailedFinishError(finishReason);
      } catch (err) {
        // The reply was whole (its finish_reason came) when the connection
        // broke, before the usage or [DONE]: the reply stands, as it does
        // when such a stream ends cleanly; its usage is counted by the gateway.
        const whole = finishReason !== undefined && !isFailedFinish(finishReason);
        if (!whole || call.signal.aborted || !isBrokenConnection(err)) throw call.fail(err);
        logger?.warn(
          { ...traceLogFields(request.trace), upstream: describeFailure(err, [options.apiKey]) },
          "model server's stream broke after the reply was whole; the reply stands",
        );
      }
      if (usage !== undefined || finishReason !== undefined) yield { usage, finishReason };
    },
  };
}
