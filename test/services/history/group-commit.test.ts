import { describe, expect, it } from "vitest";
import {
  createGroupCommit,
  ExpiredWaitingError,
} from "../../../src/services/history/group-commit.js";

const fulfilled = <R>(value: R): PromiseSettledResult<R> => ({ status: "fulfilled", value });
const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

/** A writer that records its batches and answers each item with item × 10. */
function recordingWriter() {
  const batches: number[][] = [];
  let writing = 0;
  let mostAtOnce = 0;
  const write = async (items: readonly number[]) => {
    batches.push([...items]);
    mostAtOnce = Math.max(mostAtOnce, ++writing);
    await nextTurn();
    writing--;
    return items.map((n) => fulfilled(n * 10));
  };
  return { write, batches, mostAtOnce: () => mostAtOnce };
}

/** A writer whose batches finish only when the test says so. */
function heldWriter() {
  const batches: number[][] = [];
  const release: (() => void)[] = [];
  const write = async (items: readonly number[]) => {
    batches.push([...items]);
    await new Promise<void>((resolve) => release.push(resolve));
    return items.map((n) => fulfilled(n));
  };
  return { write, batches, release };
}

describe("group commit", () => {
  it("does not write items whose deadline passed while an earlier batch was written, failing them with one error", async () => {
    const writer = heldWriter();
    const queue = createGroupCommit(writer.write, 256);
    const first = queue.submit(1);
    await Promise.resolve();
    // While the first batch is held (a database that stalls), more arrive.
    const now = performance.now();
    const late = Promise.allSettled([queue.submit(2, now + 20), queue.submit(3, now + 20)]);
    const inTime = queue.submit(4, now + 60_000);
    const noDeadline = queue.submit(5);
    await new Promise((resolve) => setTimeout(resolve, 50));
    (writer.release.shift() as () => void)();
    await expect(first).resolves.toBe(1);
    await expect.poll(() => writer.batches.length).toBe(2);
    (writer.release.shift() as () => void)();
    expect(await Promise.all([inTime, noDeadline])).toEqual([4, 5]);
    expect(writer.batches).toEqual([[1], [4, 5]]);
    const failures = await late;
    const reasons = failures.map((f) => (f.status === "rejected" ? f.reason : f.value));
    expect(reasons[0]).toBeInstanceOf(ExpiredWaitingError);
    expect(reasons[1]).toBe(reasons[0]);
    expect((reasons[0] as ExpiredWaitingError).count).toBe(2);
  });

  it("fails items when their deadline passes while the batch before them is still being written", async () => {
    const writer = heldWriter();
    const queue = createGroupCommit(writer.write, 256);
    const first = queue.submit(1);
    await Promise.resolve();
    // The database stalls on the first batch; the later arrivals give up meanwhile.
    const now = performance.now();
    const soon = queue.submit(2, now + 20);
    const later = queue.submit(3, now + 80);
    const inTime = queue.submit(4, now + 60_000);
    const outcomes: unknown[] = [];
    void soon.catch((err: unknown) => outcomes.push(["soon", err]));
    void later.catch((err: unknown) => outcomes.push(["later", err]));
    await expect.poll(() => outcomes.length, { timeout: 1_000, interval: 5 }).toBe(1);
    expect(outcomes[0]).toEqual(["soon", expect.any(ExpiredWaitingError)]);
    await expect.poll(() => outcomes.length, { timeout: 1_000, interval: 5 }).toBe(2);
    expect(outcomes[1]).toEqual(["later", expect.any(ExpiredWaitingError)]);
    // The stall is still on: nothing of theirs was written, or will be.
    expect(writer.batches).toEqual([[1]]);
    (writer.release.shift() as () => void)();
    await expect(first).resolves.toBe(1);
    await expect.poll(() => writer.batches.length).toBe(2);
    (writer.release.shift() as () => void)();
    await expect(inTime).resolves.toBe(4);
    expect(writer.batches).toEqual([[1], [4]]);
  });

  it("fails an item its batch write gave no outcome for, and goes on with the next batch", async () => {
    const queue = createGroupCommit(
      async (items: readonly number[]) => items.slice(1).map((n) => fulfilled(n * 10)),
      256,
    );
    // The writer answers one item short: the last item of each batch has no outcome.
    expect(await Promise.allSettled([queue.submit(1), queue.submit(2)])).toMatchObject([
      { status: "fulfilled", value: 20 },
      { status: "rejected" },
    ]);
    expect(await Promise.allSettled([queue.submit(3)])).toMatchObject([{ status: "rejected" }]);
  });

  it("writes an item that finds the queue idle at once, without waiting for the event loop", async () => {
    const writer = recordingWriter();
    const queue = createGroupCommit(writer.write, 256);
    const outcome = queue.submit(7);
    await Promise.resolve();
    expect(writer.batches).toEqual([[7]]);
    await expect(outcome).resolves.toBe(70);
  });

  it("writes items submitted in one synchronous run as one batch, in order, each with its own outcome", async () => {
    const writer = recordingWriter();
    const queue = createGroupCommit(writer.write, 256);
    const outcomes = await Promise.all([1, 2, 3, 4, 5].map((n) => queue.submit(n)));
    expect(writer.batches).toEqual([[1, 2, 3, 4, 5]]);
    expect(outcomes).toEqual([10, 20, 30, 40, 50]);
  });

  it("collects what arrives in the rest of the turn of a write that took no time, as SQLite's", async () => {
    const batches: number[][] = [];
    const queue = createGroupCommit(async (items: readonly number[]) => {
      batches.push([...items]);
      return items.map((n) => fulfilled(n));
    }, 256);
    // Separate callbacks of one turn, as requests read from several connections.
    const outcomes = await new Promise<number[]>((resolve) => {
      const submitted: Promise<number>[] = [];
      for (const n of [1, 2, 3, 4]) setImmediate(() => submitted.push(queue.submit(n)));
      setImmediate(() => resolve(Promise.all(submitted)));
    });
    expect(batches).toEqual([[1], [2, 3, 4]]);
    expect(outcomes).toEqual([1, 2, 3, 4]);
    // A turn later the queue is idle again.
    await nextTurn();
    await queue.submit(5);
    expect(batches).toEqual([[1], [2, 3, 4], [5]]);
  });

  it("collects what arrives while a batch is written into the next batch", async () => {
    const writer = heldWriter();
    const queue = createGroupCommit(writer.write, 256);
    const first = queue.submit(1);
    await nextTurn();
    const later = [2, 3, 4].map((n) => queue.submit(n));
    await nextTurn();
    // Nothing starts while the first batch is unfinished.
    expect(writer.batches).toEqual([[1]]);
    writer.release.shift()?.();
    await expect(first).resolves.toBe(1);
    await nextTurn();
    expect(writer.batches).toEqual([[1], [2, 3, 4]]);
    writer.release.shift()?.();
    await expect(Promise.all(later)).resolves.toEqual([2, 3, 4]);
  });

  it("caps batches at the maximum and writes one batch at a time", async () => {
    const writer = recordingWriter();
    const queue = createGroupCommit(writer.write, 2);
    const outcomes = await Promise.all([1, 2, 3, 4, 5].map((n) => queue.submit(n)));
    expect(writer.batches).toEqual([[1, 2], [3, 4], [5]]);
    expect(writer.mostAtOnce()).toBe(1);
    expect(outcomes).toEqual([10, 20, 30, 40, 50]);
  });

  it("settles each item with its own outcome, fulfilled or rejected", async () => {
    const refused = new Error("odd");
    const queue = createGroupCommit(
      async (items: readonly number[]) =>
        items.map(
          (n): PromiseSettledResult<number> =>
            n % 2 === 0 ? fulfilled(n) : { status: "rejected", reason: refused },
        ),
      256,
    );
    const outcomes = await Promise.allSettled([1, 2, 3, 4].map((n) => queue.submit(n)));
    expect(outcomes).toEqual([
      { status: "rejected", reason: refused },
      fulfilled(2),
      { status: "rejected", reason: refused },
      fulfilled(4),
    ]);
  });

  it("fails every item of a failed batch, and no item of the next one", async () => {
    const broken = new Error("database gone");
    let calls = 0;
    const queue = createGroupCommit(async (items: readonly number[]) => {
      calls++;
      await nextTurn();
      if (calls === 1) throw broken;
      return items.map((n) => fulfilled(n));
    }, 256);
    const failed = [1, 2, 3].map((n) => queue.submit(n));
    await nextTurn();
    const next = [4, 5].map((n) => queue.submit(n));
    const outcomes = await Promise.allSettled([...failed, ...next]);
    expect(outcomes).toEqual([
      { status: "rejected", reason: broken },
      { status: "rejected", reason: broken },
      { status: "rejected", reason: broken },
      fulfilled(4),
      fulfilled(5),
    ]);
    expect(calls).toBe(2);
  });

  it("drains every item, including those submitted while draining", async () => {
    const writer = recordingWriter();
    const queue = createGroupCommit(writer.write, 2);
    const settled: number[] = [];
    for (const n of [1, 2, 3]) void queue.submit(n).then((r) => settled.push(r));
    const drained = queue.drain();
    await nextTurn();
    for (const n of [4, 5]) void queue.submit(n).then((r) => settled.push(r));
    await drained;
    expect(settled).toEqual([10, 20, 30, 40, 50]);
    await expect(queue.drain()).resolves.toBeUndefined();
  });
});
