import { Code, ConnectError } from "@connectrpc/connect";
import type { FastifyError } from "fastify";
import {
  FilterRejectionReason,
  FilterRejectionSchema,
  PromptTooLongSchema,
  QuotaExceededSchema,
  UnsupportedParameterSchema,
} from "../../gen/chat/v1/errors_pb.js";
import { httpStatusFromCode } from "../lib/http-status.js";
import { RateLimitedError } from "./protection.js";

/** The body of every gateway error response. */
export interface ErrorBody {
  readonly error: string;
  readonly remaining?: number;
}

/** An HTTP error the gateway answers with. */
export interface HttpError {
  readonly status: number;
  readonly body: ErrorBody;
}

/** The upstream a failure came from; it names the contract's "<stage> failed" body. */
export type Stage = "filter" | "token" | "llm";

export const badRequest = (error: string): HttpError => ({ status: 400, body: { error } });

/**
 * Turns what an upstream call threw into the contract's status and body. The
 * status comes from the gRPC code; the words come from the typed details,
 * never from the upstream's message, so nothing internal leaks to callers.
 */
export function httpErrorFromRpc(stage: Stage, err: unknown): HttpError {
  const cause = ConnectError.from(err);
  const status = httpStatusFromCode(cause.code);
  if (stage === "filter" && cause.code === Code.InvalidArgument) {
    const [rejection] = cause.findDetails(FilterRejectionSchema);
    if (rejection?.reason === FilterRejectionReason.EMPTY) return badRequest("text is required");
    return badRequest("text blocked by filter");
  }
  // The model cannot answer in the form asked (JSON of the echo stub).
  if (stage === "llm" && cause.findDetails(UnsupportedParameterSchema).length > 0) {
    return badRequest("response_format not supported by the model");
  }
  // The model's context cannot take the prompt: the request must be shorter.
  if (stage === "llm" && cause.findDetails(PromptTooLongSchema).length > 0) {
    return badRequest("text too long");
  }
  if (stage === "token" && cause.code === Code.ResourceExhausted) {
    const [quota] = cause.findDetails(QuotaExceededSchema);
    if (quota !== undefined) {
      return { status, body: { error: "quota exceeded", remaining: Number(quota.remaining) } };
    }
    return { status, body: { error: "quota exceeded" } };
  }
  // RESOURCE_EXHAUSTED from another stage is a message over a size limit
  // (MAX_BODY_BYTES set above the services' MAX_REQUEST_BYTES, say): the
  // chain's setup fails, and a 429 would tell the caller to retry in vain.
  const failed = cause.code === Code.ResourceExhausted ? 500 : status;
  return { status: failed, body: { error: `${stage} failed` } };
}

/**
 * Fastify's own request errors (and the rate limiter's refusal) as the
 * contract's statuses and bodies: 413 too large, 415 not JSON, 429 rate
 * limited, 400 for any other request error (the body did not parse), else 500.
 */
export function httpErrorFromFastify(err: FastifyError): HttpError {
  if (err instanceof RateLimitedError) return { status: 429, body: { error: "rate limited" } };
  switch (err.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return { status: 413, body: { error: "request body too large" } };
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return { status: 415, body: { error: "content-type must be application/json" } };
  }
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) {
    return badRequest("bad json or missing user_id");
  }
  return { status: 500, body: { error: "internal error" } };
}

/**
 * A request Fastify refused before routing it: a path that is not
 * percent-encoded UTF-8 (`/chat%ZZ`). Its other such refusals are of route
 * parameters and constraints the gateway's routes do not have.
 */
export function httpErrorFromUnroutable(err: FastifyError): HttpError {
  if (err.code === "FST_ERR_BAD_URL") {
    return { status: 400, body: { error: "path is not percent-encoded UTF-8" } };
  }
  return { status: 500, body: { error: "internal error" } };
}
