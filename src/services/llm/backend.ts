import type { TraceContext } from "../../lib/trace.js";

/** The author of a message of a conversation, as OpenAI's API names them. */
export type ContextRole = "system" | "developer" | "user" | "assistant";

/** One message of the conversation before the text. */
export interface ContextMessage {
  readonly role: ContextRole;
  readonly content: string;
}

/**
 * How the model picks its words: the OpenAI API's sampling parameters, each
 * absent unless asked for (the model server's default applies).
 */
export interface LlmSampling {
  readonly temperature?: number;
  readonly topP?: number;
  readonly stop?: readonly string[];
  readonly seed?: number;
  readonly presencePenalty?: number;
  readonly frequencyPenalty?: number;
  readonly reasoningEffort?: string;
}

/** The form a reply must take, beside text: the OpenAI API's response_format. */
export type LlmResponseFormat =
  | { readonly type: "json_object" }
  | { readonly type: "json_schema"; readonly jsonSchema: Readonly<Record<string, unknown>> };

/** What a model is asked. */
export interface LlmRequest {
  readonly text: string;
  /** The conversation before `text`, oldest first (system prompts, earlier turns); none when absent. */
  readonly context?: readonly ContextMessage[];
  /** Sampling parameters asked for; none when absent. */
  readonly sampling?: LlmSampling | undefined;
  /** The form the reply must take; text when absent. */
  readonly responseFormat?: LlmResponseFormat | undefined;
  readonly userId: string;
  /** Most tokens the reply may have; undefined leaves it to the backend. */
  readonly maxTokens?: number | undefined;
  /** The call's trace, for the backend's log lines. */
  readonly trace?: TraceContext | undefined;
}

/** Tokens one model call used, as the model server counted them. */
export interface LlmUsage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly totalTokens: number;
}

/** What a model answered. */
export interface LlmResult {
  readonly reply: string;
  /** Absent when the backend does not count tokens (echo). */
  readonly usage?: LlmUsage | undefined;
  /** Why the reply ended ("stop", "length", …); absent means "stop". */
  readonly finishReason?: string | undefined;
}

/** The last item of a stream, after its pieces: what `generate` tells beside the reply. */
export type LlmStreamEnd = Omit<LlmResult, "reply">;

/**
 * The call a unary reply is for: its `signal` aborts when the caller cancels
 * or its deadline passes. A backend reads it only when it needs it (to wait,
 * or to call a model server): on the lean path a call's signal is made on
 * its first read, and each AbortSignal costs the service about 2.6 KB of
 * young objects that outlive garbage collections (`--trace-gc-nvp` under
 * load).
 */
export interface LlmCall {
  readonly signal: AbortSignal;
}

/**
 * A model behind the LLM service. A call's signal aborts when the caller
 * cancels or its deadline passes; a backend stops its work then.
 */
export interface LlmBackend {
  readonly name: string;
  /** The model id clients see (GET /v1/models); `name` when absent. */
  readonly model?: string;
  /** Whether it answers in the form a request's responseFormat asks (JSON); if not, such a request is refused. */
  readonly followsResponseFormat?: boolean;
  generate(request: LlmRequest, call: LlmCall): Promise<LlmResult>;
  /**
   * The same reply as `generate`, in pieces as the model produces them: the
   * pieces (strings) joined are the whole reply; a backend that knows more
   * may end with one LlmStreamEnd. Iteration ends early (throwing the abort
   * reason) once `signal` aborts.
   */
  stream(request: LlmRequest, signal: AbortSignal): AsyncIterable<string | LlmStreamEnd>;
}
