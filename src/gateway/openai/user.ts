import type { FastifyRequest } from "fastify";

/**
 * The user a /v1 request is charged and recorded for: the one place that
 * decides it. Today it is the OpenAI `user` field of the body; once API keys
 * are configured (API_KEYS_FILE) it is to be the key's user, so that a
 * client cannot name someone else. Undefined means no user: the request is
 * refused with 400 in OpenAI's error shape.
 */
export function userFor(_req: FastifyRequest, bodyUser: string | undefined): string | undefined {
  return bodyUser;
}
