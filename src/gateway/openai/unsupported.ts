import { type Body, isRecord } from "./body.js";
import { invalidRequest, type OpenAiError } from "./errors.js";

const unsupported = (param: string, allowed: string) =>
  invalidRequest(
    `Unsupported value: '${param}' can only be ${allowed} here: the chain answers with text alone.`,
    param,
    "unsupported_value",
  );

/**
 * A tool choice that leaves the model free to answer in text: "auto",
 * "none", or allowed tools in "auto" mode. Any other (`required`, one named
 * function) promises a tool call, which no answer of the chain has.
 */
function leavesTextFree(choice: unknown): boolean {
  if (choice === "auto" || choice === "none") return true;
  if (!isRecord(choice) || choice.type !== "allowed_tools") return false;
  const allowed = choice.allowed_tools;
  return isRecord(allowed) && allowed.mode === "auto";
}

/**
 * The error for a parameter (already of a valid type) that asks for what the
 * chain cannot give, undefined when there is none. Each of these makes
 * OpenAI promise something of the answer: a tool call, log probabilities.
 * (JSON, of a schema or not, goes to the model: response_format.) Answered with plain text, a client relying on the
 * promise fails far from the cause (the SDK's `parse()` on text that is no
 * JSON, `message.tool_calls` absent): a 400 naming the parameter is clearer.
 */
export function unsupportedParameterError(body: Body): OpenAiError | undefined {
  const toolChoice = body.tool_choice;
  if (toolChoice !== undefined && toolChoice !== null && !leavesTextFree(toolChoice)) {
    return unsupported("tool_choice", "'auto' or 'none'");
  }
  // The deprecated form of tool_choice: an object names the function to call.
  if (isRecord(body.function_call)) return unsupported("function_call", "'auto' or 'none'");
  if (body.logprobs === true) return unsupported("logprobs", "false");
  return undefined;
}
