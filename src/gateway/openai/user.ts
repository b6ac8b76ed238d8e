import type { FastifyRequest } from "fastify";

/**
 * The user a /v1 request is charged and recorded for: the one place that
 * decides it. With API keys configured (API_KEYS_FILE) it is the key's user,
 * and a `user` field naming someone else is refused by the caller (undefined
 * here); without keys it is the OpenAI `user` field. Undefined means no
 * user: the request is refused with 400 in OpenAI's error shape.
 */
export function userFor(req: FastifyRequest, bodyUser: string | undefined): string | undefined {
  if (req.apiUser === undefined) return bodyUser;
  return bodyUser === undefined || bodyUser === req.apiUser ? req.apiUser : undefined;
}
