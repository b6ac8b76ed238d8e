import { createServer, type Server } from "node:http";
import { connect } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { openSseStream, type SseStream } from "../../src/gateway/sse.js";

let server: Server | undefined;
afterEach(() => {
  server?.close();
  server?.closeAllConnections();
});

/** An event stream served to a raw client that reads nothing; `write` gets the server's stream. */
async function streamToStalledClient(stallLimitMs: number | undefined) {
  let sse: SseStream | undefined;
  const opened = new Promise<SseStream>((resolve) => {
    server = createServer((_req, res) => {
      sse = openSseStream(res, {}, { stallLimitMs });
      resolve(sse);
    });
  });
  await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", resolve));
  const address = server?.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  const socket = connect(port, "127.0.0.1");
  socket.write("GET / HTTP/1.1\r\nhost: x\r\n\r\n");
  socket.pause();
  return { sse: await opened, socket };
}

describe("openSseStream", () => {
  it("closes the connection when a write waits on the client longer than stallLimitMs", async () => {
    const { sse } = await streamToStalledClient(300);
    const started = Date.now();
    // Far more than the sockets' buffers hold.
    await sse.write(`data: ${"x".repeat(32 * 1024 * 1024)}\n\n`);
    expect(sse.signal.aborted).toBe(true);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("waits for a client that reads nothing when no limit is set", async () => {
    const { sse } = await streamToStalledClient(undefined);
    const written = sse.write(`data: ${"x".repeat(32 * 1024 * 1024)}\n\n`).then(() => "written");
    const waited = new Promise((resolve) => setTimeout(() => resolve("still waiting"), 1_000));
    expect(await Promise.race([written, waited])).toBe("still waiting");
    expect(sse.signal.aborted).toBe(false);
  });
});

/** Serves one event stream opened with `options`; `act` writes to it. Resolves with the body read by fetch. */
async function streamBody(
  options: Parameters<typeof openSseStream>[2],
  act: (sse: SseStream) => Promise<void>,
): Promise<string> {
  server = createServer((_req, res) => {
    const sse = openSseStream(res, {}, options);
    void act(sse).then(() => sse.end());
  });
  await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  return (await fetch(`http://127.0.0.1:${port}/`)).text();
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("openSseStream's keep-alive comments", () => {
  it("are sent each keepAliveMs while nothing else is, the headers with the first, and not after the end", async () => {
    const body = await streamBody({ deferHeaders: true, keepAliveMs: 100 }, async (sse) => {
      await sleep(350);
      await sse.send("done", { ok: true });
    });
    const [before, after] = body.split('event: done\ndata: {"ok":true}\n\n');
    expect(before?.split(": keep-alive\n\n").length).toBeGreaterThanOrEqual(3);
    expect(before?.replaceAll(": keep-alive\n\n", "")).toBe("");
    expect(after).toBe("");
  });

  it("are not sent while frames come more often than keepAliveMs", async () => {
    // A period ten times the gap between frames: a loaded machine stretches a gap, rarely tenfold.
    const body = await streamBody({ keepAliveMs: 500 }, async (sse) => {
      for (let i = 0; i < 8; i++) {
        await sse.send("delta", { i });
        await sleep(50);
      }
    });
    expect(body).not.toContain("keep-alive");
    expect(body.match(/event: delta/g)).toHaveLength(8);
  });

  it("are not sent without keepAliveMs", async () => {
    const body = await streamBody({}, async (sse) => {
      await sleep(300);
      await sse.send("done", {});
    });
    expect(body).toBe("event: done\ndata: {}\n\n");
  });
});
