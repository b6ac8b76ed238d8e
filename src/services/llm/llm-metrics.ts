import type { Registry } from "prom-client";
import { counter, histogram } from "../../lib/metrics.js";
import type { LlmStreamEnd } from "./backend.js";

/** What the LLM service counts of the model's work. */
export interface LlmMetrics {
  /** A reply that ended: its tokens, when the model server counted them, and why it ended. */
  ended(end: LlmStreamEnd): void;
  /** Seconds from a streamed call's start to the model's first piece of text. */
  firstPiece(seconds: number): void;
}

/**
 * The finish reasons OpenAI's API names; any other a server sends (vLLM's
 * "abort", a proxy's own) is counted as "other", so label values stay few.
 */
const finishReasons = new Set(["stop", "length", "content_filter", "tool_calls", "function_call"]);

/**
 * The LLM service's own metrics, for `model`: tokens used by kind (what a
 * bill or a capacity plan is made of), replies by finish reason ("length"
 * tells replies cut short), and the time to the first piece of a streamed
 * reply (what a user waits before anything shows). Each label set is looked
 * up once, here.
 */
export function createLlmMetrics(registry: Registry, model: string): LlmMetrics {
  const tokens = counter(
    registry,
    "chatmesh_llm_tokens_total",
    "Tokens the model used, as its server counted them, by kind: prompt, completion",
    ["model", "kind"],
  );
  const prompt = tokens.child({ model, kind: "prompt" });
  const completion = tokens.child({ model, kind: "completion" });
  const replies = counter(
    registry,
    "chatmesh_llm_replies_total",
    "Replies the model finished, by finish reason (stop, length, content_filter, tool_calls, function_call, other)",
    ["model", "finish_reason"],
  );
  const firstPiece = histogram(
    registry,
    "chatmesh_llm_time_to_first_token_seconds",
    "Time from a streamed call's start to the model's first piece of text",
    ["model"],
  ).child({ model });
  return {
    ended({ usage, finishReason = "stop" }) {
      if (usage !== undefined) {
        prompt.inc(usage.promptTokens);
        completion.inc(usage.completionTokens);
      }
      replies.inc({
        model,
        finish_reason: finishReasons.has(finishReason) ? finishReason : "other",
      });
    },
    firstPiece: (seconds) => firstPiece.observe(seconds),
  };
}
