import { createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { HistoryService } from "../../gen/chat/v1/history_pb.js";
import { createHistoryRecorder } from "../../src/gateway/history-recorder.js";
import { continueTrace } from "../../src/lib/trace.js";
import { createMemoryLogger } from "../fixtures/logs.js";

const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";

describe("a chat the history recorder cannot encode", () => {
  it("is logged lost in the chat's trace", () => {
    const { logger, lines } = createMemoryLogger();
    const recorder = createHistoryRecorder({
      client: createClient(
        HistoryService,
        createRouterTransport(() => {}),
      ),
      logger,
      retryWindowMs: 1_000,
      queueLimit: 10,
    });
    const trace = continueTrace(`00-${traceId}-00f067aa0ba902b7-01`, "r-1");
    recorder.record({
      userId: "u1",
      text: "hi",
      reply: "Echo: hi",
      // No time a protobuf Timestamp can hold.
      createdAt: new Date(Number.NaN),
      requestId: "r-1",
      trace,
    });
    const lost = lines.filter((line) => String(line.msg).startsWith("history entry lost"));
    expect(lost).toEqual([expect.objectContaining({ trace_id: traceId, request_id: "r-1" })]);
  });
});
