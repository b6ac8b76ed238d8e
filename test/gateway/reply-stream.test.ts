import { getEventListeners } from "node:events";
import { describe, expect, it } from "vitest";
import { deadlineOf, deadlineReached, eitherSignal } from "../../src/gateway/reply-stream.js";
import { runWithOneGcThread } from "../fixtures/gc-process.js";

describe("eitherSignal", () => {
  it("aborts with the reason of whichever signal aborts first", () => {
    const client = new AbortController();
    const stopping = new AbortController();
    const call = eitherSignal(client.signal, stopping.signal);
    stopping.abort(new Error("the gateway is shutting down"));
    client.abort(new Error("client gone"));
    expect(call.signal.aborted).toBe(true);
    expect((call.signal.reason as Error).message).toBe("the gateway is shutting down");
    const late = eitherSignal(new AbortController().signal, stopping.signal);
    expect((late.signal.reason as Error).message).toBe("the gateway is shutting down");
  });

  it("leaves no listener on either signal once unlinked", () => {
    const client = new AbortController();
    const stopping = new AbortController();
    const call = eitherSignal(client.signal, stopping.signal);
    expect(getEventListeners(stopping.signal, "abort")).toHaveLength(1);
    call.unlink();
    expect(getEventListeners(client.signal, "abort")).toHaveLength(0);
    expect(getEventListeners(stopping.signal, "abort")).toHaveLength(0);
    stopping.abort();
    expect(call.signal.aborted).toBe(false);
  });

  it("is the client's signal itself when there is no second one", () => {
    const client = new AbortController();
    expect(eitherSignal(client.signal, undefined).signal).toBe(client.signal);
  });

  it("leaves nothing behind per streamed chat, however long the gateway runs", async () => {
    const { perCall, stoppingAborted } = await runWithOneGcThread<{
      perCall: number;
      stoppingAborted: boolean;
    }>(new URL("../fixtures/either-signal-footprint.ts", import.meta.url));
    expect(stoppingAborted).toBe(false);
    // AbortSignal.any([client, stopping]) left ~2 KB a call here on Node 20.
    expect(perCall).toBeLessThan(8);
  });
});

describe("deadlineOf", () => {
  it("leaves nothing behind per piece raced against it, however long the stream", async () => {
    const { perRace, heldByClient } = await runWithOneGcThread<{
      perRace: number;
      heldByClient: boolean;
    }>(new URL("../fixtures/deadline-race-footprint.ts", import.meta.url));
    expect(heldByClient).toBe(false);
    // Promise.race([write, deadline]) left ~300 bytes a piece on the deadline's promise.
    expect(perRace).toBeLessThan(16);
  });

  it("tells a write still waiting a grace after the deadline from the model being late", async () => {
    let expired = 0;
    const late = deadlineOf(50, () => expired++);
    await new Promise((r) => setTimeout(r, 100));
    expect([expired, late.heldByClient]).toEqual([1, false]);
    late.clear();
    const held = deadlineOf(50, () => expired++);
    const outcome = await held.race(new Promise<void>(() => {}));
    expect(outcome).toBe(deadlineReached);
    expect([expired, held.heldByClient]).toEqual([1, true]);
    held.clear();
  });
});
