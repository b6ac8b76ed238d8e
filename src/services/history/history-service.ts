import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  type HistoryEntry,
  HistoryEntrySchema,
  type HistoryService,
} from "../../../gen/chat/v1/history_pb.js";
import {
  type Entry,
  HistoryInputError,
  type HistoryStore,
  RequestIdConflictError,
} from "./history-store.js";

export interface HistoryServiceDeps {
  readonly store: HistoryStore;
  /** The time of an append that names none (the system clock by default). */
  readonly now?: () => Date;
}

function requireUserId(userId: string): void {
  if (userId === "") throw new ConnectError("user_id is required", Code.InvalidArgument);
}

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
  return new ConnectError("history store failed", Code.Internal, undefined, undefined, err);
}

/** chat.v1.HistoryService over a HistoryStore. */
export function createHistoryService(deps: HistoryServiceDeps): ServiceImpl<typeof HistoryService> {
  const { store } = deps;
  const now = deps.now ?? (() => new Date());
  return {
    async append(req) {
      requireUserId(req.userId);
      try {
        const { entry, created } = await store.append({
          userId: req.userId,
          text: req.text,
          reply: req.reply,
          createdAtMs: req.createdAt === undefined ? now().getTime() : toMs(req.createdAt),
          requestId: req.requestId,
        });
        return { entry: toMessage(entry), created };
      } catch (err) {
        throw fromStoreError(err);
      }
    },

    async list(req) {
      requireUserId(req.userId);
      try {
        const page = await store.list({
          userId: req.userId,
          pageSize: req.pageSize,
          pageToken: req.pageToken,
        });
        return { entries: page.entries.map(toMessage), nextPageToken: page.nextPageToken };
      } catch (err) {
        throw fromStoreError(err);
      }
    },
  };
}
