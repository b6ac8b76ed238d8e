import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  type HistoryEntry,
  HistoryEntrySchema,
  type HistoryService,
  type HistoryServiceAppendRequest,
} from "../../../gen/chat/v1/history_pb.js";
import type { Logger } from "../../lib/logger.js";
import { continueTrace, type TraceContext, traceLogFields, traceOf } from "../../lib/trace.js";
import { requireUserId } from "../../lib/user-id.js";
import { ExpiredWaitingError } from "./group-commit.js";
import {
  type Entry,
  HistoryInputError,
  type HistoryStore,
  RequestIdConflictError,
} from "./history-store.js";

export interface HistoryServiceDeps {
  readonly store: HistoryStore;
  /** Gets a line per entry of an AppendBatch, in that entry's trace. */
  readonly logger?: Logger;
  /** The time of an append that names none (the system clock by default). */
  readonly now?: () => Date;
}

/** Most entries one AppendBatch may carry. */
export const maxBatchEntries = 1000;

const toMessage = (entry: Entry): HistoryEntry =>
  create(HistoryEntrySchema, {
    id: entry.id,
    userId: entry.userId,
    text: entry.text,
    reply: entry.reply,
    createdAt: timestampFromDate(new Date(entry.createdAtMs)),
    requestId: entry.requestId,
  });

/** The store keeps milliseconds; finer digits are dropped, not rounded up into the future. */
const toMs = (ts: Timestamp): number =>
  Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1_000_000);

/** Turns the store's refusals into their codes; other failures stay INTERNAL with the cause kept. */
function fromStoreError(err: unknown): ConnectError {
  if (err instanceof HistoryInputError) {
    return new ConnectError(err.message, Code.InvalidArgument, undefined, undefined, err);
  }
  if (err instanceof RequestIdConflictError) {
    return new ConnectError(err.message, Code.AlreadyExists, undefined, undefined, err);
  }
  if (err instanceof ExpiredWaitingError) {
    return new ConnectError(
      "the deadline passed while the append waited for the database",
      Code.DeadlineExceeded,
      undefined,
      undefined,
      err,
    );
  }
  return new ConnectError("history store failed", Code.Internal, undefined, undefined, err);
}

/** The call's deadline as a `performance.now()` time, if it has one. */
const deadlineOf = (ctx: HandlerContext): number | undefined => {
  const left = ctx.timeoutMs();
  return left === undefined ? undefined : performance.now() + left;
};

/** The log fields of a batched entry's own trace. */
const entryTrace = (entry: HistoryServiceAppendRequest) =>
  traceLogFields(continueTrace(entry.traceparent, entry.requestId));

/** chat.v1.HistoryService over a HistoryStore. */
export function createHistoryService(deps: HistoryServiceDeps): ServiceImpl<typeof HistoryService> {
  const { store } = deps;
  const now = deps.now ?? (() => new Date());
  // A batch that fails fails each of its entries with the one error: logged once.
  const logged = new WeakSet<object>();
  /**
   * The store's failure as the caller hears it; an INTERNAL one logged with
   * its cause, in the trace of the call it failed.
   */
  const failure = (err: unknown, trace: TraceContext | undefined) => {
    const answer = fromStoreError(err);
    // The error itself (a primitive gets a wrapper of its own: logged each time).
    const key: object = Object(err);
    if (answer.code === Code.Internal && !logged.has(key)) {
      logged.add(key);
      deps.logger?.error({ ...traceLogFields(trace), err }, "history store failed");
    } else if (err instanceof ExpiredWaitingError && !logged.has(err)) {
      logged.add(err);
      deps.logger?.warn(
        { dropped: err.count },
        "appends not written: their deadlines passed while they waited for the database",
      );
    }
    return answer;
  };
  /** Stores one chat; the answer carries the stored entry unless `withEntry` is false. */
  const appendOne = async (
    req: HistoryServiceAppendRequest,
    withEntry: boolean,
    trace: TraceContext | undefined,
    deadline: number | undefined,
  ) => {
    requireUserId(req.userId);
    try {
      const { entry, created } = await store.append(
        {
          userId: req.userId,
          text: req.text,
          reply: req.reply,
          createdAtMs: req.createdAt === undefined ? now().getTime() : toMs(req.createdAt),
          requestId: req.requestId,
        },
        deadline,
      );
      return withEntry ? { entry: toMessage(entry), created } : { created };
    } catch (err) {
      throw failure(err, trace);
    }
  };
  return {
    append: (req, ctx) => appendOne(req, true, traceOf(ctx), deadlineOf(ctx)),

    async appendBatch(req, ctx) {
      if (req.entries.length > maxBatchEntries) {
        throw new ConnectError(
          `at most ${maxBatchEntries} entries per batch, got ${req.entries.length}`,
          Code.InvalidArgument,
        );
      }
      // The store commits what arrives together in one transaction. Each
      // entry's log line is in the trace of its chat (W3C span-link style):
      // it carries the chat's trace and request ids.
      const deadline = deadlineOf(ctx);
      const results = await Promise.all(
        req.entries.map((entry) =>
          appendOne(entry, !req.omitEntries, traceOf(ctx), deadline).then(
            (appended) => {
              if (deps.logger?.isLevelEnabled("info")) {
                deps.logger.info(
                  { ...entryTrace(entry), created: appended.created },
                  "history entry appended",
                );
              }
              return { result: { case: "appended" as const, value: appended } };
            },
            (err: unknown) => {
              const { code, rawMessage } = ConnectError.from(err);
              // Entries whose deadline passed waiting were logged together.
              if (code !== Code.DeadlineExceeded) {
                deps.logger?.warn(
                  { ...entryTrace(entry), code: Code[code], reason: rawMessage },
                  "history entry refused",
                );
              }
              return {
                result: { case: "error" as const, value: { code, message: rawMessage } },
              };
            },
          ),
        ),
      );
      return { results };
    },

    async list(req, ctx) {
      requireUserId(req.userId);
      try {
        const page = await store.list({
          userId: req.userId,
          pageSize: req.pageSize,
          pageToken: req.pageToken,
        });
        return { entries: page.entries.map(toMessage), nextPageToken: page.nextPageToken };
      } catch (err) {
        throw failure(err, traceOf(ctx));
      }
    },
  };
}
