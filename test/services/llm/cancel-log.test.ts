import { createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it, vi } from "vitest";
import { LLMService } from "../../../gen/chat/v1/llm_pb.js";
import type { Logger } from "../../../src/lib/logger.js";
import { createTraceServerInterceptor } from "../../../src/lib/trace.js";
import { createEchoBackend } from "../../../src/services/llm/echo-backend.js";
import { createLlmService } from "../../../src/services/llm/llm-service.js";
import { createMemoryLogger } from "../../fixtures/logs.js";

const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";

describe("a stream its caller cancels", () => {
  it.each([
    ["no x-request-id", {}],
    ["an x-request-id it does not take", { "x-request-id": "not an id!" }],
  ])("is logged with the request id the call's trace has, with %s", async (_case, extra) => {
    const { logger, lines } = createMemoryLogger();
    const transport = createRouterTransport(
      (router) =>
        router.service(
          LLMService,
          createLlmService({
            backend: createEchoBackend({ chunkDelayMs: 200 }),
            logger: logger as unknown as Logger,
          }),
        ),
      { router: { interceptors: [createTraceServerInterceptor()] } },
    );
    const abort = new AbortController();
    const stream = createClient(LLMService, transport).generateStream(
      { text: "one two three four" },
      {
        signal: abort.signal,
        headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01`, ...extra },
      },
    );
    await expect(
      (async () => {
        for await (const _piece of stream) abort.abort();
      })(),
    ).rejects.toThrow();
    await vi.waitFor(() => expect(lines.some((l) => l.msg === "stream cancelled")).toBe(true));
    const line = lines.find((l) => l.msg === "stream cancelled");
    expect(line?.trace_id).toBe(traceId);
    // The id the service's other lines have: a UUIDv7 of its own, not the caller's header.
    expect(line?.request_id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-/);
  });
});
