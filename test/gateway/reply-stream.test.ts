import { getEventListeners } from "node:events";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  deadlineOf,
  deadlineReached,
  eitherSignal,
  openedAgainIfRefused,
} from "../../src/gateway/reply-stream.js";
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

describe("openedAgainIfRefused", () => {
  /** A stream that yields `pieces`, then fails with `error` if given. */
  async function* stream(pieces: string[], error?: ConnectError) {
    yield* pieces;
    if (error !== undefined) throw error;
  }
  const collect = async (pieces: AsyncIterable<string>) => {
    const out: string[] = [];
    for await (const piece of pieces) out.push(piece);
    return out;
  };
  // As the gateway's gRPC client reports a stream refused by a draining
  // service: Node's own error, and connect-node's for the reset code.
  const refusals = [
    new ConnectError("Stream closed with error code NGHTTP2_REFUSED_STREAM", Code.Internal),
    new ConnectError("http/2 stream closed with error code REFUSED_STREAM (0x7)", Code.Unavailable),
  ];

  it.each(refusals)("opens a stream refused unrun once more: %s", async (refused) => {
    let opened = 0;
    const pieces = openedAgainIfRefused(() =>
      opened++ === 0 ? stream([], refused) : stream(["Echo: ", "hi"]),
    );
    expect(await collect(pieces)).toEqual(["Echo: ", "hi"]);
    expect(opened).toBe(2);
  });

  it("opens it at most twice, and never again once a piece came or for another failure", async () => {
    const [refused] = refusals as [ConnectError];
    let opened = 0;
    const always = openedAgainIfRefused(() => {
      opened++;
      return stream([], refused);
    });
    await expect(collect(always)).rejects.toBe(refused);
    expect(opened).toBe(2);
    opened = 0;
    const midway = openedAgainIfRefused(() => {
      opened++;
      return stream(["Echo: "], refused);
    });
    await expect(collect(midway)).rejects.toBe(refused);
    expect(opened).toBe(1);
    const down = new ConnectError("connect ECONNREFUSED", Code.Unavailable);
    opened = 0;
    const failing = openedAgainIfRefused(() => {
      opened++;
      return stream([], down);
    });
    await expect(collect(failing)).rejects.toBe(down);
    expect(opened).toBe(1);
  });
});
