import { ResponseFormatType, Role } from "../../../gen/chat/v1/llm_pb.js";
import type { ChatResponseFormat, ChatSampling, ContextMessage } from "../chat.js";
import { type Body, isRecord } from "./body.js";
import { invalidRequest, type OpenAiError } from "./errors.js";
import { unsupportedParameterError } from "./unsupported.js";

/** What the gateway takes from a POST /v1/chat/completions body. */
export interface CompletionRequest {
  /** The model asked for; answers name the model that answered. */
  readonly model: string;
  /** The last user message: the one text that goes through Filter → Token → LLM. */
  readonly text: string;
  /**
   * The messages before it that the model is sent (system and developer
   * prompts, earlier turns), oldest first; tool results and messages
   * without text are not.
   */
  readonly context: ContextMessage[];
  /** The sampling parameters asked for, passed on to the model; none when absent. */
  readonly sampling: ChatSampling | undefined;
  /** response_format, unless it is text: the form the model must answer in. */
  readonly responseFormat: ChatResponseFormat | undefined;
  readonly stream: boolean;
  /** stream_options.include_usage: end the stream with a usage chunk. */
  readonly includeUsage: boolean;
  /** The `user` field; empty counts as absent. */
  readonly user: string | undefined;
  /**
   * The `safety_identifier` field (empty counts as absent): the SDK's
   * successor of `user`, taken as the user when `user` is absent.
   */
  readonly safetyIdentifier: string | undefined;
  /** max_completion_tokens, else max_tokens. */
  readonly maxTokens: number | undefined;
}

const int32Max = 2 ** 31 - 1;

/** The text of a message's content: a string, or text parts (joined by line breaks). */
function textOf(content: unknown, param: string): string | OpenAiError {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return invalidRequest(`${param} must be a string`, param);
  const texts: string[] = [];
  for (const part of content) {
    if (!isRecord(part) || part.type !== "text" || typeof part.text !== "string") {
      return invalidRequest("only text content parts are supported", param);
    }
    texts.push(part.text);
  }
  return texts.join("\n");
}

/**
 * The text of an earlier message's content as the model is sent it: a
 * string, or its text parts (an assistant's refusal parts too) joined by
 * line breaks; other parts (images, audio, files) are left out, and a
 * message with no text part at all is not sent (undefined).
 */
function contextTextOf(content: unknown): string | undefined {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return undefined;
  const texts: string[] = [];
  for (const part of content) {
    if (!isRecord(part)) continue;
    if (part.type === "text" && typeof part.text === "string") texts.push(part.text);
    if (part.type === "refusal" && typeof part.refusal === "string") texts.push(part.refusal);
  }
  return texts.length === 0 ? undefined : texts.join("\n");
}

const contextRoles: Readonly<Record<string, Role>> = {
  system: Role.SYSTEM,
  developer: Role.DEVELOPER,
  user: Role.USER,
  assistant: Role.ASSISTANT,
};

/**
 * The messages before the last user message as the model is sent them: the
 * tools' (role `tool` or `function`) and those without text (an assistant's
 * tool calls, an image alone: the chain carries text only) are left out.
 */
function contextOf(messages: readonly Body[]): ContextMessage[] {
  const context: ContextMessage[] = [];
  for (const { role, content } of messages) {
    const known = contextRoles[role as string];
    const text = contextTextOf(content);
    if (known !== undefined && text !== undefined) context.push({ role: known, content: text });
  }
  return context;
}

function optionalBoolean(body: Body, name: string, param = name): boolean | OpenAiError {
  const value = body[name];
  if (value === undefined || value === null) return false;
  return typeof value === "boolean" ? value : invalidRequest(`${param} must be a boolean`, param);
}

function optionalTokens(body: Body, name: string): number | undefined | OpenAiError {
  const value = body[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > int32Max) {
    return invalidRequest(`${name} must be a positive integer`, name);
  }
  return value;
}

const isError = (value: unknown): value is OpenAiError =>
  isRecord(value) && "status" in value && "body" in value;

const invalidType = (param: string, expected: string) =>
  invalidRequest(`Invalid type for '${param}': expected ${expected}.`, param, "invalid_type");

const isNumberIn = (min: number, max: number) => (value: unknown) =>
  typeof value === "number" && value >= min && value <= max;
const isInteger = (value: unknown) => Number.isSafeInteger(value);
const isString = (value: unknown) => typeof value === "string";
const isBoolean = (value: unknown) => typeof value === "boolean";
const isArray = (value: unknown) => Array.isArray(value);
const isStop = (value: unknown) =>
  typeof value === "string" ||
  (Array.isArray(value) && value.length <= 4 && value.every((s) => typeof s === "string"));

/**
 * The parameters checked as OpenAI checks them (a client's mistake is a 400
 * here as there): the sampling ones are then passed on (samplingOf), the
 * others not. `null` is their absence. Parameters OpenAI does not know
 * pass: servers such as vLLM and Ollama take their own (`top_k`, `min_p`, …).
 */
const checkedParameters: readonly [string, (value: unknown) => boolean, string][] = [
  ["temperature", isNumberIn(0, 2), "a number from 0 to 2"],
  ["top_p", isNumberIn(0, 1), "a number from 0 to 1"],
  ["presence_penalty", isNumberIn(-2, 2), "a number from -2 to 2"],
  ["frequency_penalty", isNumberIn(-2, 2), "a number from -2 to 2"],
  ["seed", isInteger, "an integer"],
  ["logprobs", isBoolean, "a boolean"],
  [
    "top_logprobs",
    (v) => isInteger(v) && (v as number) >= 0 && (v as number) <= 20,
    "an integer from 0 to 20",
  ],
  ["stop", isStop, "a string or an array of at most 4 strings"],
  ["logit_bias", isRecord, "an object"],
  ["response_format", isRecord, "an object"],
  ["tools", isArray, "an array"],
  ["tool_choice", (v) => isString(v) || isRecord(v), "a string or an object"],
  ["parallel_tool_calls", isBoolean, "a boolean"],
  ["functions", isArray, "an array"],
  ["function_call", (v) => isString(v) || isRecord(v), "a string or an object"],
  ["store", isBoolean, "a boolean"],
  ["metadata", isRecord, "an object"],
  ["modalities", isArray, "an array"],
  ["reasoning_effort", isString, "a string"],
  ["service_tier", isString, "a string"],
  ["prompt_cache_key", isString, "a string"],
];

/**
 * The sampling parameters asked for (checked already), as the LLM service
 * takes them; undefined when none was.
 */
function samplingOf(body: Body): ChatSampling | undefined {
  const given = (name: string) => (body[name] === null ? undefined : body[name]);
  const stop = given("stop") as string | string[] | undefined;
  const seed = given("seed") as number | undefined;
  const sampling: ChatSampling = {
    temperature: given("temperature") as number | undefined,
    topP: given("top_p") as number | undefined,
    stop: stop === undefined ? [] : typeof stop === "string" ? [stop] : stop,
    seed: seed === undefined ? undefined : BigInt(seed),
    presencePenalty: given("presence_penalty") as number | undefined,
    frequencyPenalty: given("frequency_penalty") as number | undefined,
    reasoningEffort: given("reasoning_effort") as string | undefined,
  };
  const none = Object.values(sampling).every(
    (value) => value === undefined || (Array.isArray(value) && value.length === 0),
  );
  return none ? undefined : sampling;
}

/**
 * response_format (an object, checked already) as the LLM service takes it:
 * undefined for text; an OpenAI error for a type it does not know, or a
 * json_schema without its object and name, as OpenAI answers them.
 */
function responseFormatOf(body: Body): ChatResponseFormat | undefined | OpenAiError {
  const format = body.response_format;
  if (!isRecord(format) || format.type === "text") return undefined;
  if (format.type === "json_object") {
    return { type: ResponseFormatType.JSON_OBJECT, jsonSchema: "" };
  }
  if (format.type === undefined || format.type === null) {
    return invalidRequest(
      "Missing required parameter: 'response_format.type'.",
      "response_format.type",
      "missing_required_parameter",
    );
  }
  if (format.type !== "json_schema") {
    return invalidRequest(
      "Invalid value for 'response_format.type': supported values are 'text', 'json_object' and 'json_schema'.",
      "response_format.type",
      "invalid_value",
    );
  }
  const schema = format.json_schema;
  if (!isRecord(schema)) {
    return invalidRequest(
      "Missing required parameter: 'response_format.json_schema'.",
      "response_format.json_schema",
      "missing_required_parameter",
    );
  }
  if (typeof schema.name !== "string" || schema.name === "") {
    return invalidRequest(
      "Missing required parameter: 'response_format.json_schema.name'.",
      "response_format.json_schema.name",
      "missing_required_parameter",
    );
  }
  return { type: ResponseFormatType.JSON_SCHEMA, jsonSchema: JSON.stringify(schema) };
}

const roles = ["system", "developer", "user", "assistant", "tool", "function"];

/** A message's role and content as OpenAI checks them; undefined when they pass. */
function messageError(message: Body, i: number): OpenAiError | undefined {
  const { role, content } = message;
  if (typeof role !== "string" || !roles.includes(role)) {
    return invalidRequest(
      `Invalid value for 'messages[${i}].role': supported values are ${roles.map((r) => `'${r}'`).join(", ")}.`,
      `messages[${i}].role`,
      "invalid_value",
    );
  }
  // An assistant's content may be absent (a message of tool calls).
  const contentOptional = role === "assistant";
  const absent = content === undefined || content === null;
  if (absent ? !contentOptional : typeof content !== "string" && !Array.isArray(content)) {
    return invalidType(`messages[${i}].content`, "a string or an array of content parts");
  }
  if (role === "tool" && typeof message.tool_call_id !== "string") {
    return invalidType(`messages[${i}].tool_call_id`, "a string");
  }
  return undefined;
}

/**
 * Checks a chat completions body. The last message with role "user" is the
 * chat's text (cleaned, filtered, charged, answered and kept, as a /chat's);
 * the messages before it are its context, sent to the model before it,
 * checked by the filter and counted in the prompt, neither cleaned nor kept.
 * Messages after it are not sent. Without a user message, or with n other
 * than 1, it is a 400. Sampling parameters are checked and passed on to the
 * model (samplingOf), and so is response_format (responseFormatOf); tool
 * parameters are checked, then ignored; those that ask for what a text
 * answer cannot give are a 400 (see unsupportedParameterError).
 */
export function parseCompletionRequest(body: unknown): CompletionRequest | OpenAiError {
  if (!isRecord(body)) return invalidRequest("request body must be a JSON object", null);
  const { model, messages, user, n } = body;
  if (typeof model !== "string" || model === "") {
    return invalidRequest("model is required", "model");
  }
  if (!Array.isArray(messages) || messages.length === 0) {
    return invalidRequest("messages must be a non-empty array", "messages");
  }
  if (!messages.every(isRecord)) {
    return invalidRequest("each message must be an object with a role", "messages");
  }
  for (const [i, message] of (messages as Body[]).entries()) {
    const err = messageError(message, i);
    if (err !== undefined) return err;
  }
  const last = (messages as Body[]).findLastIndex((m) => m.role === "user");
  if (last === -1) return invalidRequest("messages must include a user message", "messages");
  const text = textOf(messages[last]?.content, `messages[${last}].content`);
  if (isError(text)) return text;
  const context = contextOf((messages as Body[]).slice(0, last));
  if (user !== undefined && user !== null && typeof user !== "string") {
    return invalidRequest("user must be a string", "user");
  }
  const safetyIdentifier = body.safety_identifier;
  if (
    safetyIdentifier !== undefined &&
    safetyIdentifier !== null &&
    typeof safetyIdentifier !== "string"
  ) {
    return invalidRequest("safety_identifier must be a string", "safety_identifier");
  }
  for (const [name, valid, expected] of checkedParameters) {
    const value = body[name];
    if (value !== undefined && value !== null && !valid(value)) return invalidType(name, expected);
  }
  const unsupported = unsupportedParameterError(body);
  if (unsupported !== undefined) return unsupported;
  const responseFormat = responseFormatOf(body);
  if (isError(responseFormat)) return responseFormat;
  if (n !== undefined && n !== null && !isInteger(n)) return invalidType("n", "an integer");
  if (n !== undefined && n !== null && n !== 1) return invalidRequest("only n=1 is supported", "n");
  const stream = optionalBoolean(body, "stream");
  if (isError(stream)) return stream;
  const options = body.stream_options;
  if (options !== undefined && options !== null && !isRecord(options)) {
    return invalidRequest("stream_options must be an object", "stream_options");
  }
  const includeUsage = optionalBoolean(
    options ?? {},
    "include_usage",
    "stream_options.include_usage",
  );
  if (isError(includeUsage)) return includeUsage;
  if (options !== undefined && options !== null && !stream) {
    return invalidRequest(
      "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
      "stream_options",
    );
  }
  const maxCompletion = optionalTokens(body, "max_completion_tokens");
  if (isError(maxCompletion)) return maxCompletion;
  const maxTokens = optionalTokens(body, "max_tokens");
  if (isError(maxTokens)) return maxTokens;
  return {
    model,
    text,
    context,
    sampling: samplingOf(body),
    responseFormat,
    stream,
    includeUsage,
    user: typeof user === "string" && user !== "" ? user : undefined,
    safetyIdentifier:
      typeof safetyIdentifier === "string" && safetyIdentifier !== ""
        ? safetyIdentifier
        : undefined,
    maxTokens: maxCompletion ?? maxTokens,
  };
}
