import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import { LLMService } from "../../gen/chat/v1/llm_pb.js";
import { retryRefusedStreams } from "../../src/lib/refused-stream-retry.js";
import { createEchoBackend } from "../../src/services/llm/echo-backend.js";
import { createLlmService } from "../../src/services/llm/llm-service.js";

let server: http2.Http2Server | undefined;
const sessions = new Set<http2.ServerHttp2Session>();
afterEach(async () => {
  // The clients' sessions stay open (they idle out later): close waits for them.
  for (const session of sessions) session.destroy();
  sessions.clear();
  await new Promise((resolve) => server?.close(resolve) ?? resolve(undefined));
  server = undefined;
});

/**
 * The LLM service over gRPC that refuses its first `refusals` streams
 * unprocessed (RST_STREAM REFUSED_STREAM), as a draining server refuses
 * those opened before its GOAWAY reached the client.
 */
async function refusingLlm(refusals: number) {
  const served = connectNodeAdapter({
    routes: (router) =>
      router.service(LLMService, createLlmService({ backend: createEchoBackend() })),
  });
  const seen = { streams: 0 };
  server = http2.createServer((req, res) => {
    seen.streams++;
    if (seen.streams <= refusals) req.stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
    else served(req, res);
  });
  server.on("session", (session) => sessions.add(session));
  await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", resolve));
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { baseUrl, seen };
}

const grpc = (baseUrl: string) => createGrpcTransport({ baseUrl });
const llm = (transport: Transport) => createClient(LLMService, transport);
const codeOf = (err: unknown) => Code[ConnectError.from(err).code];

describe("retryRefusedStreams", () => {
  it("sends a unary call the server refused unprocessed once more", async () => {
    const { baseUrl, seen } = await refusingLlm(1);
    const answer = await llm(retryRefusedStreams(grpc(baseUrl))).generate({ text: "hi" });
    expect(answer.reply).toBe("Echo: hi");
    expect(seen.streams).toBe(2);
  });

  it("tries once more only: a server refusing every stream fails the call", async () => {
    const { baseUrl, seen } = await refusingLlm(Number.POSITIVE_INFINITY);
    const failed = await llm(retryRefusedStreams(grpc(baseUrl)))
      .generate({ text: "hi" })
      .catch((err: unknown) => err);
    expect(codeOf(failed)).toBe("Internal");
    expect(seen.streams).toBe(2);
  });

  it("is needed: the stock transport fails a refused call", async () => {
    const { baseUrl, seen } = await refusingLlm(1);
    const failed = await llm(grpc(baseUrl))
      .generate({ text: "hi" })
      .catch((err: unknown) => err);
    expect(String(failed)).toContain("NGHTTP2_REFUSED_STREAM");
    expect(seen.streams).toBe(1);
  });
});
