import type { ChatUsage } from "../quota-cost.js";

/** OpenAI's usage object. */
export interface OpenAiUsage {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
}

/** What every response of one completion shares. */
export interface CompletionHead {
  /** `chatcmpl-<request id>`. */
  readonly id: string;
  /** Unix seconds. */
  readonly created: number;
  readonly model: string;
}

export const openAiUsage = (usage: ChatUsage): OpenAiUsage => ({
  prompt_tokens: usage.promptTokens,
  completion_tokens: usage.completionTokens,
  total_tokens: usage.totalTokens,
});

/** The head of the completion answering request `requestId`. */
export function completionHead(requestId: string, model: string, now = new Date()): CompletionHead {
  return { id: `chatcmpl-${requestId}`, created: Math.floor(now.getTime() / 1000), model };
}

/** A whole answer: OpenAI's `chat.completion`. */
export function completionBody(
  head: CompletionHead,
  reply: string,
  finishReason: string,
  usage: ChatUsage,
) {
  return {
    id: head.id,
    object: "chat.completion",
    created: head.created,
    model: head.model,
    choices: [
      {
        index: 0,
        message: { role: "assistant", content: reply, refusal: null },
        logprobs: null,
        finish_reason: finishReason,
      },
    ],
    usage: openAiUsage(usage),
  };
}

/**
 * One piece of a streamed answer: OpenAI's `chat.completion.chunk`. With
 * include_usage every chunk carries `usage: null` but the last, which has no
 * choices and the usage (see usageChunk).
 */
export function completionChunk(
  head: CompletionHead,
  delta: { role?: "assistant"; content?: string },
  finishReason: string | null,
  includeUsage: boolean,
) {
  return {
    id: head.id,
    object: "chat.completion.chunk",
    created: head.created,
    model: head.model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
    ...(includeUsage && { usage: null }),
  };
}

/** The last chunk of a stream asked for with include_usage. */
export function usageChunk(head: CompletionHead, usage: ChatUsage) {
  return {
    id: head.id,
    object: "chat.completion.chunk",
    created: head.created,
    model: head.model,
    choices: [],
    usage: openAiUsage(usage),
  };
}

/** An entry of GET /v1/models. */
export function modelObject(id: string) {
  // The gateway does not know when the model was made: 0, as the field is required.
  return { id, object: "model", created: 0, owned_by: "chatmesh" };
}
