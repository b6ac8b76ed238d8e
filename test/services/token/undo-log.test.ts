import { createClient, createRouterTransport } from "@connectrpc/connect";
import { afterEach, describe, expect, it, vi } from "vitest";
import { TokenService } from "../../../gen/chat/v1/token_pb.js";
import type { Logger } from "../../../src/lib/logger.js";
import { createTraceServerInterceptor } from "../../../src/lib/trace.js";
import { createMemoryQuotaStore } from "../../../src/services/token/memory-store.js";
import {
  type QuotaStore,
  QuotaStoreUnavailableError,
} from "../../../src/services/token/quota-store.js";
import { createTokenService } from "../../../src/services/token/token-service.js";
import { createMemoryLogger } from "../../fixtures/logs.js";

const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
const headers = { traceparent: `00-${traceId}-00f067aa0ba902b7-01`, "x-request-id": "r-1" };

afterEach(() => {
  vi.useRealTimers();
});

/** A store whose charges run but time out; its refunds fail while `refunds` says so. */
function timingOutStore(refunds: { fail: boolean }): QuotaStore {
  const memory = createMemoryQuotaStore();
  return {
    ...memory,
    async charge(input) {
      await memory.charge(input);
      throw new QuotaStoreUnavailableError("timed out", { mayHaveRun: true });
    },
    async refund(input) {
      if (refunds.fail) throw new QuotaStoreUnavailableError("down");
      return memory.refund(input);
    },
  };
}

function tokenClient(store: QuotaStore) {
  const { logger, lines } = createMemoryLogger();
  const service = createTokenService({
    store,
    limit: 200,
    defaultCost: 50,
    failOpen: true,
    logger: logger as unknown as Logger,
  });
  const transport = createRouterTransport((router) => router.service(TokenService, service), {
    router: { interceptors: [createTraceServerInterceptor()] },
  });
  return { client: createClient(TokenService, transport), lines };
}

const about = (lines: Record<string, unknown>[], words: string) =>
  lines.filter((line) => String(line.msg).includes(words));

describe("QUOTA_FAIL_OPEN: a charge that timed out, taken back in the background", () => {
  it("logs the taking back in the chat's trace", async () => {
    const { client, lines } = tokenClient(timingOutStore({ fail: false }));
    const answer = await client.checkAndInc({ userId: "u1", chargeId: "r-1" }, { headers });
    expect(answer.unmetered).toBe(true);
    await vi.waitFor(() => expect(about(lines, "taken back")).toHaveLength(1));
    expect(about(lines, "taken back")[0]).toMatchObject({ trace_id: traceId, request_id: "r-1" });
  });

  it("logs giving up in the chat's trace", async () => {
    vi.useFakeTimers();
    const { client, lines } = tokenClient(timingOutStore({ fail: true }));
    await client.checkAndInc({ userId: "u1", chargeId: "r-1" }, { headers });
    await vi.advanceTimersByTimeAsync(40_000);
    const given = about(lines, "not taken back");
    expect(given).toHaveLength(1);
    expect(given[0]).toMatchObject({ trace_id: traceId, request_id: "r-1" });
  });
});
