/**
 * Group commit: items submitted while a batch is being written, or in the
 * event-loop turn it was written in, are written together by the next call of
 * `write` — one transaction, one sync to disk — and then each submitter gets
 * its own outcome. An item that finds the queue idle is written at once: no
 * timer, no wait for the event loop.
 */

/**
 * Writes a batch and returns exactly one outcome per item, in order. Throwing
 * fails every item of the batch (and no later one).
 */
export type WriteBatch<T, R> = (items: readonly T[]) => Promise<PromiseSettledResult<R>[]>;

/**
 * What items whose deadline passed while they waited are failed with, all
 * of one sweep with the one error: they are not written, their callers
 * having given up (a caller that retries sends them again). Without this, a
 * database that stalls would keep every append of the stall, and each retry
 * of it, queued in memory.
 */
export class ExpiredWaitingError extends Error {
  override name = "ExpiredWaitingError";
  constructor(readonly count: number) {
    super(
      `${count} waiting ${count === 1 ? "item" : "items"} not written: the deadline passed while an earlier batch was written`,
    );
  }
}

/** A queue of items written in batches, one batch at a time. */
export interface GroupCommit<T, R> {
  /**
   * Settles with the item's own outcome once its batch is written; fails
   * with ExpiredWaitingError if `deadline` (a `performance.now()` time)
   * passes before its batch begins (when it passes, not only once the batch
   * before it is written).
   */
  submit(item: T, deadline?: number): Promise<R>;
  /** Resolves when every submitted item, including those submitted meanwhile, is written. */
  drain(): Promise<void>;
}

interface Waiting<T, R> {
  readonly item: T;
  readonly deadline: number | undefined;
  resolve(value: R): void;
  reject(reason: unknown): void;
}

/**
 * A queue that hands `write` up to `maxBatch` items at a time; the next batch
 * starts when the previous one is written.
 */
export function createGroupCommit<T, R>(
  write: WriteBatch<T, R>,
  maxBatch: number,
): GroupCommit<T, R> {
  const queue: Waiting<T, R>[] = [];
  let writing: Promise<void> | undefined;
  /**
   * Fails waiting items at the earliest deadline among them, while a batch
   * is written: a database that stalls does not keep them (nor every retry
   * of them) in memory until it answers.
   */
  let sweep: NodeJS.Timeout | undefined;
  let sweepAt = Number.POSITIVE_INFINITY;
  const armSweep = (at: number) => {
    clearTimeout(sweep);
    sweepAt = at;
    sweep = setTimeout(
      () => {
        sweep = undefined;
        sweepAt = Number.POSITIVE_INFINITY;
        dropExpired();
        let next = Number.POSITIVE_INFINITY;
        for (const waiting of queue) {
          if (waiting.deadline !== undefined && waiting.deadline < next) next = waiting.deadline;
        }
        if (next !== Number.POSITIVE_INFINITY) armSweep(next);
      },
      Math.max(0, Math.ceil(at - performance.now())),
    );
    sweep.unref();
  };
  const stopSweep = () => {
    clearTimeout(sweep);
    sweep = undefined;
    sweepAt = Number.POSITIVE_INFINITY;
  };

  async function writeQueue(): Promise<void> {
    // Items submitted in the same synchronous run go in together.
    await Promise.resolve();
    do {
      dropExpired();
      if (queue.length === 0) break;
      await writeBatch(queue.splice(0, maxBatch));
      // Until this event-loop turn ends, arrivals (other requests read in the
      // same poll) wait for the next batch. SQLite writes synchronously, so
      // nothing could queue up while its batch runs; this is its chance.
      if (queue.length === 0) await new Promise((resolve) => setImmediate(resolve));
    } while (queue.length > 0);
    stopSweep();
    writing = undefined;
  }

  /** Fails the items whose deadline passed while they waited. */
  function dropExpired(): void {
    const now = performance.now();
    let kept = 0;
    let expired: Waiting<T, R>[] | undefined;
    for (const waiting of queue) {
      if (waiting.deadline !== undefined && waiting.deadline <= now) {
        expired ??= [];
        expired.push(waiting);
      } else queue[kept++] = waiting;
    }
    if (expired === undefined) return;
    queue.length = kept;
    const err = new ExpiredWaitingError(expired.length);
    for (const waiting of expired) waiting.reject(err);
  }

  async function writeBatch(batch: readonly Waiting<T, R>[]): Promise<void> {
    let outcomes: PromiseSettledResult<R>[];
    try {
      outcomes = await write(batch.map((waiting) => waiting.item));
    } catch (err) {
      for (const waiting of batch) waiting.reject(err);
      return;
    }
    for (const [i, waiting] of batch.entries()) {
      const outcome = outcomes[i];
      if (outcome === undefined) waiting.reject(new Error("the batch write gave no outcome"));
      else if (outcome.status === "fulfilled") waiting.resolve(outcome.value);
      else waiting.reject(outcome.reason);
    }
  }

  return {
    submit(item, deadline) {
      const settled = new Promise<R>((resolve, reject) =>
        queue.push({ item, deadline, resolve, reject }),
      );
      // (An item that finds the queue idle is written at once: nothing to sweep.)
      if (writing !== undefined && deadline !== undefined && deadline < sweepAt) {
        armSweep(deadline);
      }
      writing ??= writeQueue();
      return settled;
    },

    async drain() {
      while (writing !== undefined) await writing;
    },
  };
}
