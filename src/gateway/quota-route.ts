import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { FastifyInstance } from "fastify";
import { traceCallOptions, traceLogFields } from "../lib/trace.js";
import { userIdTooLong } from "../lib/user-id.js";
import { httpErrorFromRpc } from "./errors.js";
import { retryOnceIfUnavailable } from "./quota.js";
import { hasDecodableQuery, isUserId, undecodableQuery } from "./request-guards.js";
import type { Upstreams } from "./upstreams.js";

/** The 200 body of GET /quota. */
export interface QuotaBody {
  readonly user_id: string;
  readonly used: number;
  readonly remaining: number;
  readonly limit: number;
  /** When the day's quota resets (ISO 8601, UTC). */
  readonly reset_at: string;
}

/**
 * GET /quota?user_id=… → the user's quota of the day, read without charging:
 * 400 `user_id is required` without a user, 500 `token failed` when the token
 * service (or its store) fails.
 */
export function registerQuotaRoute(app: FastifyInstance, upstreams: Upstreams): void {
  app.get("/quota", async (req, reply) => {
    if (!hasDecodableQuery(req.url)) return reply.code(400).send({ error: undecodableQuery });
    const { user_id: userId } = req.query as Record<string, unknown>;
    if (!isUserId(userId)) {
      return reply.code(400).send({ error: "user_id is required" });
    }
    if (userIdTooLong(userId)) return reply.code(400).send({ error: "user_id too long" });
    try {
      const quota = await retryOnceIfUnavailable(() =>
        upstreams.token.getQuota({ userId }, traceCallOptions(req.trace)),
      );
      const body: QuotaBody = {
        user_id: userId,
        used: Number(quota.used),
        remaining: Number(quota.remaining),
        limit: Number(quota.limit),
        reset_at: quota.resetTime ? timestampDate(quota.resetTime).toISOString() : "",
      };
      return body;
    } catch (err) {
      req.log.warn({ ...traceLogFields(req.trace), err, stage: "token" }, "token call failed");
      const { status, body } = httpErrorFromRpc("token", err);
      return reply.code(status).send(body);
    }
  });
}
