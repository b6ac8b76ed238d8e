import { getEventListeners } from "node:events";
import type { HandlerContext } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus as Status } from "../../gen/health/v1/health_pb.js";
import { createHealthService } from "../../src/lib/health.js";

describe("grpc.health.v1.Health Watch", () => {
  it("leaves no abort listener behind per re-check on a long watch", async () => {
    const health = createHealthService({
      services: ["chat.v1.LLMService"],
      draining: () => false,
      watchIntervalMs: 1,
    });
    const call = new AbortController();
    const ctx = { signal: call.signal } as HandlerContext;
    const stream = health.watch({ service: "" } as never, ctx) as AsyncGenerator<{
      status: Status;
    }>;
    expect((await stream.next()).value?.status).toBe(Status.SERVING);
    // The watch re-checks every millisecond while the status stays the same.
    const next = stream.next();
    await new Promise((r) => setTimeout(r, 100));
    expect(getEventListeners(call.signal, "abort").length).toBeLessThanOrEqual(1);
    call.abort();
    expect((await next).done).toBe(true);
    expect(getEventListeners(call.signal, "abort")).toEqual([]);
  });
});
