import type { FastifyError } from "fastify";
import { type HttpError, httpErrorFromFastify } from "../errors.js";

/** OpenAI's error JSON: what its SDKs turn into typed errors. */
export interface OpenAiErrorBody {
  readonly error: {
    readonly message: string;
    readonly type: string;
    readonly param: string | null;
    readonly code: string | null;
  };
}

/** An error of the /v1 API: an HTTP status and OpenAI's error JSON. */
export interface OpenAiError {
  readonly status: number;
  readonly body: OpenAiErrorBody;
}

/** A 400 invalid_request_error about one request parameter. */
export function invalidRequest(
  message: string,
  param: string | null,
  code: string | null = null,
): OpenAiError {
  return { status: 400, body: { error: { message, type: "invalid_request_error", param, code } } };
}

/** The type OpenAI gives errors of a status, when nothing more is known. */
function typeOfStatus(status: number): string {
  if (status === 429) return "rate_limit_exceeded";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

type Known = Partial<Omit<OpenAiErrorBody["error"], "message">>;

/**
 * The contract's error words (the gateway's `{"error": …}` bodies) in
 * OpenAI's terms, where OpenAI has a type, code or parameter for them.
 */
const known: Readonly<Record<string, Known>> = {
  "text blocked by filter": { param: "messages", code: "content_filter" },
  "text is required": { param: "messages" },
  "text too long": { param: "messages", code: "context_length_exceeded" },
  "response_format not supported by the model": {
    param: "response_format",
    code: "unsupported_value",
  },
  "quota exceeded": { type: "insufficient_quota", code: "insufficient_quota" },
  "rate limited": { type: "rate_limit_exceeded", code: "rate_limit_exceeded" },
  "invalid api key": { code: "invalid_api_key" },
  "request body too large": { code: "request_too_large" },
  "content-type must be application/json": {},
  "content-encoding not supported": {},
};

/**
 * The outcome a refusal is counted under in chatmesh_chats_total: the
 * contract's words, or "bad request" for the /v1 API's own checks (their
 * messages name parameters, which would make labels without bound).
 */
export function outcomeOf(err: OpenAiError): string {
  const message = err.body.error.message;
  return message in known ? message : "bad request";
}

/**
 * Turns one of the gateway's errors (same status, same words) into OpenAI's
 * error JSON: 400 blocked or bad request, 401 invalid api key, 429 quota
 * exceeded (`insufficient_quota`) or rate limited (`rate_limit_exceeded`),
 * 500 "<stage> failed" (`server_error`).
 */
export function openAiErrorFrom(err: HttpError): OpenAiError {
  const message = err.body.error;
  const facts = known[message] ?? {};
  return {
    status: err.status,
    body: {
      error: {
        message,
        type: facts.type ?? typeOfStatus(err.status),
        param: facts.param ?? null,
        code: facts.code ?? null,
      },
    },
  };
}

/**
 * Fastify's own request errors (body too large, not JSON, bad JSON) and the
 * rate limiter's refusal in OpenAI's shape: the gateway's status and words,
 * but a body that did not parse says so and is OpenAI's invalid_request_error.
 */
export function openAiErrorFromFastify(err: FastifyError): OpenAiError {
  const http = httpErrorFromFastify(err);
  if (http.status === 400) return invalidRequest("request body is not valid JSON", null);
  return openAiErrorFrom(http);
}

/**
 * Reads a gateway error body `{"error": "words", …}` that a shared hook sent
 * (API key check, rate limit) into a /v1 response, so it can be rewritten in
 * OpenAI's shape; undefined for any other payload.
 */
export function gatewayErrorIn(payload: unknown, status: number): HttpError | undefined {
  if (typeof payload !== "string" || !payload.startsWith('{"error":"')) return undefined;
  try {
    const body = JSON.parse(payload) as { error?: unknown };
    if (typeof body.error !== "string") return undefined;
    return { status, body: { error: body.error } };
  } catch {
    return undefined;
  }
}
