import { timestampMs } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { FastifyInstance } from "fastify";
import type { HistoryService } from "../../gen/chat/v1/history_pb.js";
import type { GatewayConfig } from "../lib/config.js";
import { traceCallOptions, traceLogFields } from "../lib/trace.js";
import { userIdTooLong } from "../lib/user-id.js";
import { badRequest, type HttpError } from "./errors.js";
import { createHistoryRecorder, type HistoryRecorder } from "./history-recorder.js";
import { hasDecodableQuery, isUserId, undecodableQuery } from "./request-guards.js";

/** One item of GET /history (contract). */
export interface HistoryItem {
  readonly id: string;
  readonly text: string;
  readonly reply: string;
  /** ISO 8601 in UTC, with milliseconds. */
  readonly created_at: string;
}

/** The contract's 200 body of GET /history. */
export interface HistoryPage {
  readonly items: readonly HistoryItem[];
  /** Empty on the last page. */
  readonly next_page_token: string;
}

interface HistoryQuery {
  readonly userId: string;
  readonly pageSize: number;
  readonly pageToken: string;
}

const int32Max = 2 ** 31 - 1;

/** Checks the query string of GET /history; an HttpError says what is wrong. */
export function parseHistoryQuery(query: unknown): HistoryQuery | HttpError {
  const {
    user_id: userId,
    page_size: size,
    page_token: token,
  } = (query ?? {}) as Record<string, unknown>;
  if (!isUserId(userId)) return badRequest("user_id is required");
  if (userIdTooLong(userId)) return badRequest("user_id too long");
  let pageSize = 0;
  if (size !== undefined && size !== "") {
    if (typeof size !== "string" || !/^\d+$/.test(size)) return badRequest("invalid page_size");
    // The service caps it at 100 (AIP-158); this only keeps it an int32.
    pageSize = Math.min(Number(size), int32Max);
  }
  if (token !== undefined && typeof token !== "string") return badRequest("invalid page_token");
  return { userId, pageSize, pageToken: token ?? "" };
}

export interface HistoryRouteDeps {
  readonly client: Client<typeof HistoryService>;
  readonly config: GatewayConfig;
  /** Until when work left at shutdown may go on, for calls of `timeoutMs` (see app.ts). */
  readonly closeBy: (timeoutMs: number) => number;
}

/**
 * Adds GET /history and returns the recorder that appends each successful
 * chat in the background; when the app closes, the recorder keeps retrying
 * what is pending while the shutdown allows.
 */
export function registerHistory(app: FastifyInstance, deps: HistoryRouteDeps): HistoryRecorder {
  const { client, config } = deps;
  const recorder = createHistoryRecorder({
    client,
    logger: app.log,
    retryWindowMs: config.historyRetryWindowMs,
    queueLimit: config.historyQueueLimit,
  });
  app.addHook("onClose", () => recorder.close(deps.closeBy(config.historyTimeoutMs)));

  app.get("/history", async (req, reply) => {
    if (!hasDecodableQuery(req.url)) return reply.code(400).send({ error: undecodableQuery });
    const query = parseHistoryQuery(req.query);
    if ("status" in query) return reply.code(query.status).send(query.body);
    // The user's chats this gateway just answered are stored before the read;
    // waiting for them and the read share one HISTORY_TIMEOUT_MS.
    const deadline = performance.now() + config.historyTimeoutMs;
    await recorder.flush(query.userId, config.historyTimeoutMs);
    const timeoutMs = Math.max(1, Math.round(deadline - performance.now()));
    try {
      const page = await client.list(query, { ...traceCallOptions(req.trace), timeoutMs });
      const body: HistoryPage = {
        items: page.entries.map((e) => ({
          id: e.id,
          text: e.text,
          reply: e.reply,
          created_at: new Date(
            e.createdAt === undefined ? 0 : timestampMs(e.createdAt),
          ).toISOString(),
        })),
        next_page_token: page.nextPageToken,
      };
      return body;
    } catch (err) {
      // user_id and page_size are checked above, so the service can only mean the token.
      if (ConnectError.from(err).code === Code.InvalidArgument) {
        return reply.code(400).send({ error: "invalid page_token" });
      }
      req.log.warn({ ...traceLogFields(req.trace), err, stage: "history" }, "history call failed");
      return reply.code(500).send({ error: "history failed" });
    }
  });
  return recorder;
}
