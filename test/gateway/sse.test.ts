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
