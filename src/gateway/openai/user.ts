import type { FastifyRequest } from "fastify";

/**
 * The user a /v1 request is charged and recorded for: the one place that
 * decides it. With API keys configured (API_KEYS_FILE) it is the key's user,
 * and a `user` field naming someone else is `userMismatch`; without keys it
 * is the OpenAI `user` field. Undefined means no user. The caller refuses
 * both with 400 in OpenAI's error shape.
 */
export function userFor(
  req: FastifyRequest,
  bodyUser: string | undefined,
): string | typeof userMismatch | undefined {
  if (req.apiUser === undefined) return bodyUser;
  return bodyUser === undefined || bodyUser === req.apiUser ? req.apiUser : userMismatch;
}

/** A `user` field that names someone else than the API key's user. */
export const userMismatch = Symbol("user does not match the api key");
