import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { FastifyBaseLogger } from "fastify";
import {
  type HistoryService,
  HistoryServiceAppendBatchRequestSchema,
  HistoryServiceAppendRequestSchema,
} from "../../gen/chat/v1/history_pb.js";
import {
  continueTrace,
  formatTraceparent,
  type TraceContext,
  traceLogFields,
} from "../lib/trace.js";
import {
  type Entry,
  encodeAlone,
  entryBytes,
  GatheredBatch,
  maxBatchBytes,
  maxBatchChats,
} from "./history-batch.js";

/** A successful chat, as the gateway hands it to the history. */
export interface ChatRecord {
  readonly userId: string;
  /** The cleaned text. */
  readonly text: string;
  readonly reply: string;
  readonly createdAt: Date;
  /** The gateway's request id: makes a retried append store the chat once. */
  readonly requestId: string;
  /** The chat's trace: history logs the entry in it. */
  readonly trace?: TraceContext | undefined;
}

/** What the recorder did since it started; `pending` is what waits for a retry now. */
export interface HistoryRecorderStats {
  readonly appended: number;
  /** Appended only after one or more failed attempts. */
  readonly recovered: number;
  readonly failedAttempts: number;
  /** Given up: the retry window passed, the queue was full, or history refused the chat. */
  readonly dropped: number;
  readonly pending: number;
}

/** Appends chats to the history without ever making a chat wait or fail. */
export interface HistoryRecorder {
  /** Starts the append in the background; never throws. */
  record(chat: ChatRecord): void;
  /**
   * Sends the user's chats gathered so far at once, and resolves when the
   * first attempts under way with any of the user's chats have been answered
   * (stored, or queued for a retry): a read of the user's history made then
   * sees every chat recorded for the user before (read your writes, on this
   * gateway), and waits for no other user's. Never rejects; resolves after
   * `waitMs` at the latest.
   */
  flush(userId: string, waitMs: number): Promise<void>;
  stats(): HistoryRecorderStats;
  /**
   * Sends what was gathered and keeps retrying what is pending, with backoff,
   * until it is stored or `until` (a time in ms) comes; what is still
   * pending then is dropped and logged. Without `until`, one last attempt.
   */
  close(until?: number): Promise<void>;
}

export interface HistoryRecorderOptions {
  readonly client: Client<typeof HistoryService>;
  readonly logger: FastifyBaseLogger;
  /** How long after its first failure a chat is still retried (HISTORY_RETRY_WINDOW_MS). */
  readonly retryWindowMs: number;
  /**
   * Most chats waiting for a retry; beyond it the oldest is dropped
   * (HISTORY_QUEUE_LIMIT). Chats being sent again are dropped only once that
   * retry failed: until then the queue may hold up to one batch more.
   */
  readonly queueLimit: number;
  /** First wait before a retry; it doubles after each failure, up to maxDelayMs. */
  readonly initialDelayMs?: number;
  readonly maxDelayMs?: number;
  /** How long new chats gather before they are sent in one AppendBatch (25 ms by default). */
  readonly batchWindowMs?: number;
  /**
   * How long after a history service answered that it has no AppendBatch
   * new chats go one Append each before AppendBatch is tried again, so an
   * upgraded history gets batches again without restarting the gateway
   * (60 s by default).
   */
  readonly batchRetryMs?: number;
}

/** An entry's trace and request id, for its log lines. */
const entryLogFields = (entry: Entry) => ({
  ...(entry.traceparent === ""
    ? {}
    : traceLogFields(continueTrace(entry.traceparent, entry.requestId))),
  requestId: entry.requestId,
});

/** The failure of a whole AppendBatch, which says nothing of each chat in it. */
class RetryAlone extends Error {
  constructor(override readonly cause: unknown) {
    super(`AppendBatch failed: ${ConnectError.from(cause).message}`);
  }
}

interface Pending {
  readonly entry: Entry;
  readonly deadline: number;
}

/**
 * The history refused the chat itself, retrying cannot help: invalid, or
 * larger than its MAX_REQUEST_BYTES (ResourceExhausted, as Connect and gRPC
 * answer a message over the limit).
 */
const isPermanent = (err: unknown) => {
  const { code } = ConnectError.from(err);
  return (
    code === Code.InvalidArgument || code === Code.AlreadyExists || code === Code.ResourceExhausted
  );
};

/**
 * Appends every chat, in batches: new chats gather for `batchWindowMs` (or
 * until 128 are waiting, or 768 KiB) and go in one AppendBatch call, which costs both
 * processes far less than a call per chat. A history service without
 * AppendBatch gets one Append per chat (for `batchRetryMs`, then AppendBatch
 * is tried again). A failed append waits in a bounded
 * queue and is retried with exponential backoff until it is stored or its
 * retry window passes, so a short history outage loses nothing. Retries are
 * safe: appends are idempotent on the request id.
 */
export function createHistoryRecorder(options: HistoryRecorderOptions): HistoryRecorder {
  const { client, logger, retryWindowMs, queueLimit } = options;
  const initialDelayMs = options.initialDelayMs ?? 250;
  const maxDelayMs = options.maxDelayMs ?? 5_000;
  const counts = { appended: 0, recovered: 0, failedAttempts: 0, dropped: 0 };
  const queue: Pending[] = [];
  const inFlight = new Set<Promise<void>>();
  let delayMs = initialDelayMs;
  let timer: NodeJS.Timeout | undefined;
  let retrying = false;
  /** The queued chats whose retry is under way. */
  let resending = new Set<Pending>();
  let closed = false;
  /** Why the last retry failed: the reason given for what is lost at shutdown. */
  let lastFailure: unknown;

  const track = (work: Promise<void>) => {
    inFlight.add(work);
    void work.finally(() => inFlight.delete(work));
  };
  const toEntry = (chat: ChatRecord): Entry =>
    create(HistoryServiceAppendRequestSchema, {
      userId: chat.userId,
      text: chat.text,
      reply: chat.reply,
      createdAt: timestampFromDate(chat.createdAt),
      requestId: chat.requestId,
      traceparent: chat.trace === undefined ? "" : formatTraceparent(chat.trace),
    });
  /** One Append; in the chat's trace when `inTrace` (a retry has a trace of its own). */
  const append = (entry: Entry, inTrace: boolean) =>
    client.append(entry, {
      headers: {
        "x-request-id": entry.requestId,
        ...(inTrace && entry.traceparent ? { traceparent: entry.traceparent } : {}),
      },
    });
  const drop = (entry: Entry, why: string, err?: unknown) => {
    counts.dropped++;
    logger.error(
      { ...entryLogFields(entry), err, userId: entry.userId },
      `history entry lost: ${why}`,
    );
  };

  const enqueue = (entry: Entry) => {
    if (queueLimit === 0) return drop(entry, "retry queue full");
    while (queue.length >= queueLimit) {
      // The oldest but those being sent again, which may yet be stored; when
      // all are, the queue is trimmed once their retry is answered.
      const at = queue.findIndex((pending) => !resending.has(pending));
      if (at === -1) break;
      drop((queue.splice(at, 1)[0] as Pending).entry, "retry queue full");
    }
    queue.push({ entry, deadline: Date.now() + retryWindowMs });
    schedule();
  };
  /** Takes `done` out of the queue, wherever they are now, in one pass. */
  const dequeue = (done: ReadonlySet<Pending>) => {
    let kept = 0;
    for (const pending of queue) if (!done.has(pending)) queue[kept++] = pending;
    queue.length = kept;
  };
  /** The oldest queued chats, as many as one AppendBatch takes. */
  const oldest = (): Pending[] => {
    const chunk: Pending[] = [];
    let bytes = 0;
    for (const pending of queue) {
      bytes += entryBytes(pending.entry);
      if (chunk.length === maxBatchChats || (chunk.length > 0 && bytes > maxBatchBytes)) break;
      chunk.push(pending);
    }
    return chunk;
  };
  const expire = () => {
    const now = Date.now();
    while (queue.length > 0 && (queue[0] as Pending).deadline <= now) {
      drop((queue.shift() as Pending).entry, `not stored within ${retryWindowMs} ms`);
    }
  };
  /** The pass over the queue under way, if one is. */
  let pass: Promise<void> | undefined;
  const startPass = () => {
    pass = retryQueue();
    track(pass);
    return pass;
  };
  const schedule = () => {
    if (timer !== undefined || retrying || closed || queue.length === 0) return;
    timer = setTimeout(() => {
      timer = undefined;
      startPass();
    }, delayMs);
  };

  /**
   * What became of a queued chat's retry (`err` undefined: stored). True when
   * it is settled, stored or refused for good; false when it is to be retried.
   */
  const settle = (pending: Pending, done: Set<Pending>, err?: unknown): boolean => {
    if (err === undefined) {
      done.add(pending);
      counts.appended++;
      counts.recovered++;
      return true;
    }
    counts.failedAttempts++;
    if (!isPermanent(err)) return false;
    done.add(pending);
    drop(pending.entry, "refused by history", err);
    return true;
  };

  /**
   * Sends `chunk` again: one AppendBatch, or one Append each where history
   * has none or refused the batch as a whole (one chat too large). Resolves
   * with the first failure that calls for a later retry, if any.
   */
  async function resend(chunk: readonly Pending[], done: Set<Pending>): Promise<unknown> {
    if (chunk.length > 1) {
      try {
        const { results } = await client.appendBatch(
          create(HistoryServiceAppendBatchRequestSchema, {
            entries: chunk.map((pending) => pending.entry),
            omitEntries: true,
          }),
        );
        let failure: unknown;
        for (const [i, pending] of chunk.entries()) {
          const result = results[i]?.result;
          const err =
            result?.case === "appended"
              ? undefined
              : result?.case === "error"
                ? new ConnectError(result.value.message, result.value.code as Code)
                : new ConnectError("no result for the entry", Code.Internal);
          if (!settle(pending, done, err)) failure ??= err;
        }
        return failure;
      } catch (err) {
        if (!isPermanent(err) && ConnectError.from(err).code !== Code.Unimplemented) {
          counts.failedAttempts += chunk.length;
          return err;
        }
      }
    }
    for (const pending of chunk) {
      try {
        await append(pending.entry, false);
        settle(pending, done);
      } catch (err) {
        if (!settle(pending, done, err)) return err;
      }
    }
    return undefined;
  }

  /**
   * Works through the queue oldest first, in AppendBatch calls: one Append at
   * a time drained ~140 chats/s against a local SQLite history, and after an
   * outage shorter than the retry window the chats at the queue's end expired
   * before their turn. The first retryable failure ends the pass.
   */
  async function retryQueue(): Promise<void> {
    retrying = true;
    try {
      expire();
      for (let chunk = oldest(); chunk.length > 0; chunk = oldest()) {
        resending = new Set(chunk);
        const done = new Set<Pending>();
        const failure = await resend(chunk, done);
        dequeue(done);
        resending = new Set();
        while (queue.length > queueLimit) {
          drop((queue.shift() as Pending).entry, "retry queue full");
        }
        if (failure === undefined) {
          delayMs = initialDelayMs;
          continue;
        }
        lastFailure = failure;
        delayMs = Math.min(delayMs * 2, maxDelayMs);
        logger.warn(
          { err: failure, pending: queue.length, retryInMs: delayMs },
          "history still failing",
        );
        break;
      }
    } finally {
      resending = new Set();
      retrying = false;
      expire();
      schedule();
    }
  }

  /** A first attempt that failed: refused for good, or queued for a retry. */
  const failed = (entry: Entry, err: unknown) => {
    counts.failedAttempts++;
    if (!(err instanceof RetryAlone) && isPermanent(err)) {
      return drop(entry, "refused by history", err);
    }
    logger.warn({ ...entryLogFields(entry), err }, "history append failed; will retry");
    enqueue(entry);
  };

  /** The chats gathered for the next AppendBatch. */
  let batch = new GatheredBatch();
  let batchTimer: NodeJS.Timeout | undefined;
  /** Until when new chats go one Append each: the history said it has no AppendBatch. */
  let appendOneByOneUntil = 0;
  const batchWindowMs = options.batchWindowMs ?? 25;
  const batchRetryMs = options.batchRetryMs ?? 60_000;

  /** Sends the gathered chats: one AppendBatch, or one Append each where it is missing. */
  async function appendAll(gathered: GatheredBatch): Promise<void> {
    if (performance.now() >= appendOneByOneUntil) {
      try {
        const { results } = await client.appendBatch(gathered.request());
        for (let i = 0; i < gathered.count; i++) {
          const result = results[i]?.result;
          if (result?.case === "appended") counts.appended++;
          else if (result?.case === "error") {
            failed(
              gathered.entry(i),
              new ConnectError(result.value.message, result.value.code as Code),
            );
          } else
            failed(gathered.entry(i), new ConnectError("no result for the entry", Code.Internal));
        }
        return;
      } catch (err) {
        if (ConnectError.from(err).code !== Code.Unimplemented) {
          // The batch failed as a whole, not each chat: each is retried on
          // its own (a batch over the size limit, say, is one too large chat
          // and others that are not).
          for (const entry of gathered.entries()) failed(entry, new RetryAlone(err));
          return;
        }
        appendOneByOneUntil = performance.now() + batchRetryMs;
        logger.warn(
          { retryInMs: batchRetryMs },
          "the history service has no AppendBatch: appending chats one by one",
        );
      }
    }
    await Promise.all(
      gathered.entries().map((entry) =>
        append(entry, true).then(
          () => {
            counts.appended++;
          },
          (err: unknown) => failed(entry, err),
        ),
      ),
    );
  }

  /** First attempts (AppendBatch calls) under way, with the chats each carries. */
  const sending = new Map<Promise<void>, GatheredBatch>();
  const flushBatch = () => {
    clearTimeout(batchTimer);
    batchTimer = undefined;
    const gathered = batch;
    if (gathered.count === 0) return;
    batch = new GatheredBatch();
    const work = appendAll(gathered);
    sending.set(work, gathered);
    void work.finally(() => sending.delete(work));
    track(work);
  };
  const hasUser = (gathered: GatheredBatch, userId: string) => gathered.users.includes(userId);

  return {
    record(chat) {
      let entry: Entry;
      let bytes: Uint8Array;
      try {
        entry = toEntry(chat);
        bytes = encodeAlone(entry);
      } catch (err) {
        counts.dropped++;
        logger.error(
          { ...traceLogFields(chat.trace), err, requestId: chat.requestId, userId: chat.userId },
          "history entry lost: not encodable",
        );
        return;
      }
      if (closed) return drop(entry, "gateway shutting down");
      // A large chat is not added to a batch it would take over the limit.
      if (batch.size > 0 && batch.size + bytes.length > maxBatchBytes) flushBatch();
      batch.add(chat.userId, bytes);
      if (batch.count >= maxBatchChats || batch.size >= maxBatchBytes) flushBatch();
      else batchTimer ??= setTimeout(flushBatch, batchWindowMs);
    },

    async flush(userId, waitMs) {
      // A scan of at most a few batches, on reads only: nothing is kept per chat for it.
      if (hasUser(batch, userId)) flushBatch();
      const mine = [...sending].filter(([, gathered]) => hasUser(gathered, userId)).map(([w]) => w);
      // The user's chats waiting for a retry (the history just came back, say)
      // go now, with the whole queue before them, not at the next backoff.
      if (!closed && queue.some((pending) => pending.entry.userId === userId)) {
        if (retrying && pass !== undefined) mine.push(pass);
        else if (!retrying) {
          clearTimeout(timer);
          timer = undefined;
          mine.push(startPass());
        }
      }
      if (mine.length === 0) return;
      let waitTimer: NodeJS.Timeout | undefined;
      const waited = new Promise<void>((resolve) => {
        waitTimer = setTimeout(resolve, waitMs);
      });
      await Promise.race([Promise.allSettled(mine), waited]);
      clearTimeout(waitTimer);
    },

    stats: () => ({ ...counts, pending: queue.length }),

    async close(until = 0) {
      closed = true;
      flushBatch();
      clearTimeout(timer);
      timer = undefined;
      while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
      // The background's passes over the queue, with its backoff, while the shutdown allows.
      for (;;) {
        await retryQueue();
        if (queue.length === 0) return;
        if (Date.now() + delayMs >= until) break;
        await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
      for (const { entry } of queue.splice(0)) {
        drop(entry, "history unreachable at shutdown", lastFailure);
      }
    },
  };
}
