import { invalidRequest, type OpenAiError } from "./errors.js";

/** What the gateway takes from a POST /v1/chat/completions body. */
export interface CompletionRequest {
  /** The model asked for; answers name the model that answered. */
  readonly model: string;
  /** The last user message: the one text that goes through Filter → Token → LLM. */
  readonly text: string;
  readonly stream: boolean;
  /** stream_options.include_usage: end the stream with a usage chunk. */
  readonly includeUsage: boolean;
  /** The `user` field; empty counts as absent. */
  readonly user: string | undefined;
  /** max_completion_tokens, else max_tokens. */
  readonly maxTokens: number | undefined;
}

type Body = Record<string, unknown>;

const int32Max = 2 ** 31 - 1;

const isRecord = (value: unknown): value is Body =>
  typeof value === "object" && value !== null && !Array.isArray(value);

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

/**
 * Checks a chat completions body. The chain answers one text, so only the
 * last message with role "user" is used: system prompts, earlier turns and
 * assistant messages are accepted and not sent on (nor filtered, charged or
 * kept). Without a user message, or with n other than 1, it is a 400.
 * Sampling and tool parameters are ignored.
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
  if (!messages.every((m) => isRecord(m) && typeof m.role === "string")) {
    return invalidRequest("each message must be an object with a role", "messages");
  }
  const last = (messages as Body[]).findLastIndex((m) => m.role === "user");
  if (last === -1) return invalidRequest("messages must include a user message", "messages");
  const text = textOf(messages[last]?.content, `messages[${last}].content`);
  if (isError(text)) return text;
  if (user !== undefined && user !== null && typeof user !== "string") {
    return invalidRequest("user must be a string", "user");
  }
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
  const maxCompletion = optionalTokens(body, "max_completion_tokens");
  if (isError(maxCompletion)) return maxCompletion;
  const maxTokens = optionalTokens(body, "max_tokens");
  if (isError(maxTokens)) return maxTokens;
  return {
    model,
    text,
    stream,
    includeUsage: stream && includeUsage,
    user: typeof user === "string" && user !== "" ? user : undefined,
    maxTokens: maxCompletion ?? maxTokens,
  };
}
