import http2 from "node:http2";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { Logger } from "../../src/lib/logger.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { startEchoLlmService } from "../fixtures/rpc.js";

const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

/** Opens a gRPC call with `headers` that sends 10 bytes of a 1,000-byte message, then nothing. */
function stall(session: http2.ClientHttp2Session, headers: Record<string, string>) {
  const stream = session.request({
    ":method": "POST",
    ":path": "/chat.v1.LLMService/Generate",
    "content-type": "application/grpc",
    te: "trailers",
    ...headers,
  });
  const frame = Buffer.alloc(15);
  frame.writeUInt32BE(1_000, 1);
  stream.write(frame);
  stream.on("error", () => {});
  stream.resume();
  return new Promise<void>((resolve) => stream.once("close", resolve));
}

describe("an HTTP/2 call whose message stops half way (REQUEST_TIMEOUT_MS)", () => {
  it.each([
    ["with the caller's traceparent and x-request-id", { "x-request-id": "r-1" }],
    ["without an x-request-id", {}],
  ])(
    "is logged cancelled in the trace and under the request id of its request line, %s",
    async (_case, extra) => {
      const { logger, lines } = createMemoryLogger();
      const started = await startEchoLlmService(
        0,
        { REQUEST_TIMEOUT_MS: "200" },
        logger as unknown as Logger,
      );
      app = started.app;
      const session = http2.connect(`http://127.0.0.1:${started.port}`);
      session.on("error", () => {});
      try {
        await stall(session, { traceparent: `00-${traceId}-00f067aa0ba902b7-01`, ...extra });
      } finally {
        session.destroy();
      }
      const find = (msg: string) => lines.find((line) => line.msg === msg);
      await vi.waitFor(() => expect(find("request")).toBeDefined());
      const cancelled = find("HTTP/2 request not received in time: stream cancelled");
      expect(cancelled).toMatchObject({ trace_id: traceId, path: "/chat.v1.LLMService/Generate" });
      expect(cancelled?.request_id).toBe(find("request")?.request_id);
    },
  );
});
