import { createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { HistoryService } from "../../../gen/chat/v1/history_pb.js";
import type { Logger } from "../../../src/lib/logger.js";
import { createTraceServerInterceptor } from "../../../src/lib/trace.js";
import { createHistoryService } from "../../../src/services/history/history-service.js";
import type { HistoryStore } from "../../../src/services/history/history-store.js";
import { createMemoryLogger } from "../../fixtures/logs.js";

const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
const headers = { traceparent: `00-${traceId}-00f067aa0ba902b7-01`, "x-request-id": "r-1" };

/** A store whose database is gone: every call fails. */
const brokenStore: HistoryStore = {
  append: () => Promise.reject(new Error("database gone")),
  list: () => Promise.reject(new Error("database gone")),
  ping: () => Promise.reject(new Error("database gone")),
  close: async () => {},
};

describe("HistoryService over a store that fails", () => {
  it.each(["append", "list"] as const)(
    "logs the failure of %s in the call's trace",
    async (method) => {
      const { logger, lines } = createMemoryLogger();
      const client = createClient(
        HistoryService,
        createRouterTransport(
          (router) =>
            router.service(
              HistoryService,
              createHistoryService({ store: brokenStore, logger: logger as unknown as Logger }),
            ),
          { router: { interceptors: [createTraceServerInterceptor()] } },
        ),
      );
      const call =
        method === "append"
          ? client.append(
              { userId: "u1", text: "hi", reply: "Echo: hi", requestId: "r-1" },
              { headers },
            )
          : client.list({ userId: "u1" }, { headers });
      await expect(call).rejects.toThrow();
      expect(lines.filter((line) => line.msg === "history store failed")).toEqual([
        expect.objectContaining({ trace_id: traceId, request_id: "r-1" }),
      ]);
    },
  );
});
