import type { GatewayConfig } from "../lib/config.js";

/** Tokens one chat used: prompt, reply, and both. */
export interface ChatUsage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly totalTokens: number;
}

type Counter = (text: string) => number;
let counter: Promise<Counter> | undefined;

/** Runs without a break (of non-space or of space) longer than this are counted in pieces. */
const maxRun = 64;
const longRunSource = `\\S{${maxRun + 1},}|\\s{${maxRun + 1},}`;
const hasLongRun = new RegExp(longRunSource, "u");
const longRuns = new RegExp(longRunSource, "gu");
const runPiece = new RegExp(`[\\s\\S]{1,${maxRun}}`, "gu");

/**
 * Counts with `count`, cutting every run of more than 64 characters with no
 * whitespace (or only whitespace) into pieces of 64. Such a run is one
 * pre-token to the BPE, whose time grows with its length squared: 20,000
 * "€" took 1.4 s, 174,762 took 88 s, all of it blocking the event loop. In
 * pieces they take 7 ms and 14 ms; the count moves by about 1 % (text
 * of long runs is counted by parts, one extra token at most per cut).
 */
export function countInPieces(count: Counter, text: string): number {
  if (!hasLongRun.test(text)) return count(text);
  let total = 0;
  let last = 0;
  for (const run of text.matchAll(longRuns)) {
    if (run.index > last) total += count(text.slice(last, run.index));
    for (const [piece] of run[0].matchAll(runPiece)) total += count(piece);
    last = run.index + run[0].length;
  }
  if (last < text.length) total += count(text.slice(last));
  return total;
}

/**
 * Loads the tokenizer once, on first use (about 300 ms and 70 MB, so a
 * gateway that never counts never pays for it). o200k_base is the encoding
 * of OpenAI's current models; for other models it is an estimate.
 */
function loadCounter(): Promise<Counter> {
  counter ??= import("gpt-tokenizer/encoding/o200k_base").then(
    // A user's text may contain "<|endoftext|>": it counts as plain text, never as a control token.
    ({ countTokens }) => {
      const options = { disallowedSpecial: new Set<string>() };
      return (text: string) => countInPieces((piece) => countTokens(piece, options), text);
    },
  );
  return counter;
}

/** Counts the tokens of a text with gpt-tokenizer (o200k_base). */
export async function countTokens(text: string): Promise<number> {
  return (await loadCounter())(text);
}

/**
 * The usage of a chat: as the model server reported it, or, when it reports
 * none (the echo backend, a server that ignores include_usage), counted here
 * from the prompt and the reply.
 */
export async function chatUsage(
  prompt: string,
  reply: string,
  reported: ChatUsage | undefined,
): Promise<ChatUsage> {
  if (reported !== undefined) return reported;
  const count = await loadCounter();
  const promptTokens = count(prompt);
  const completionTokens = count(reply);
  return { promptTokens, completionTokens, totalTokens: promptTokens + completionTokens };
}

/**
 * The text a chat's prompt tokens are counted from: the messages of its
 * context (a conversation's earlier turns), then its text.
 */
export function promptOf(
  text: string,
  context: readonly { content: string }[] | undefined,
): string {
  if (context === undefined || context.length === 0) return text;
  return `${context.map((m) => m.content).join("\n")}\n${text}`;
}

/** How a chat is priced against the quota (QUOTA_COST_MODE). */
export interface CostPolicy {
  readonly mode: GatewayConfig["quotaCostMode"];
  /**
   * What to charge before the model answers, for a prompt and the most
   * tokens the reply may have; 0 means the token service's QUOTA_COST.
   */
  reserve(prompt: string, maxReplyTokens: number | undefined): Promise<number>;
  /** Whether the charge is settled to the chat's real usage once it is answered. */
  readonly settles: boolean;
}

/**
 * "fixed": every chat costs the token service's QUOTA_COST, settled never.
 * "tokens": reserve the prompt's tokens plus QUOTA_REPLY_RESERVE (or the
 * request's max_tokens when smaller) before the call; once answered, the
 * charge is settled to the tokens the chat used.
 */
export function createCostPolicy(
  config: Pick<GatewayConfig, "quotaCostMode" | "quotaReplyReserve">,
): CostPolicy {
  if (config.quotaCostMode === "fixed") {
    return { mode: "fixed", settles: false, reserve: async () => 0 };
  }
  // Loaded now, so the first chat does not wait for it.
  loadCounter().catch(() => {});
  return {
    mode: "tokens",
    settles: true,
    async reserve(prompt, maxReplyTokens) {
      const reply = Math.min(maxReplyTokens ?? config.quotaReplyReserve, config.quotaReplyReserve);
      // At least 1: a cost of 0 would mean the fixed QUOTA_COST to the token service.
      return Math.max(1, (await countTokens(prompt)) + reply);
    },
  };
}
