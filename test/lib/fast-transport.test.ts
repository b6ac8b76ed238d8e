import { getEventListeners } from "node:events";
import type { AddressInfo } from "node:net";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { LLMService } from "../../gen/chat/v1/llm_pb.js";
import { loadLlmConfig } from "../../src/lib/config.js";
import { createFastTransport } from "../../src/lib/fast-transport.js";
import { createLogger } from "../../src/lib/logger.js";
import { createRpcServer } from "../../src/lib/rpc-server.js";
import { Cancellation } from "../../src/lib/unary-transport.js";
import { codeOf } from "../fixtures/rpc.js";

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

/** An LLM service that answers after `delayMs`, counting the calls it was given. */
async function startCounting(delayMs: number) {
  const seen = { calls: 0 };
  app = await createRpcServer({
    name: "llm",
    config: loadLlmConfig({}),
    logger: createLogger("llm", "silent"),
    routes: (router) =>
      router.service(LLMService, {
        generate: async (req) => {
          seen.calls++;
          await new Promise((resolve) => setTimeout(resolve, delayMs));
          return { reply: `Echo: ${req.text}` };
        },
      }),
  });
  await app.listen({ host: "127.0.0.1", port: 0 });
  const baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const client = createClient(
    LLMService,
    createFastTransport({
      baseUrl,
      defaultTimeoutMs: 5_000,
      streamTransport: createGrpcTransport({ baseUrl }),
    }),
  );
  return { client, seen };
}

describe("unary calls over the lean HTTP/1.1 transport", () => {
  it("refuses a call whose signal was aborted before it started, without sending it", async () => {
    const { client, seen } = await startCounting(0);
    const abort = new AbortController();
    abort.abort();
    expect(await codeOf(client.generate({ text: "late" }, { signal: abort.signal }))).toBe(
      "Canceled",
    );
    expect((await client.generate({ text: "next" })).reply).toBe("Echo: next");
    expect(seen.calls).toBe(1);
  });

  it("ends a call when its Cancellation is cancelled, and sends none cancelled before", async () => {
    const { client, seen } = await startCounting(3_000);
    const gone = new Cancellation();
    const call = codeOf(client.generate({ text: "slow" }, { contextValues: gone }));
    await expect.poll(() => seen.calls).toBe(1);
    const cancelledAt = Date.now();
    gone.cancel();
    expect(await call).toBe("Canceled");
    expect(Date.now() - cancelledAt).toBeLessThan(1_000);
    expect(await codeOf(client.generate({ text: "late" }, { contextValues: gone }))).toBe(
      "Canceled",
    );
    expect(seen.calls).toBe(1);
  });

  it("leaves no listener on the caller's signal after a call timed out or failed", async () => {
    const { client } = await startCounting(300);
    const abort = new AbortController();
    for (let i = 0; i < 3; i++) {
      expect(
        await codeOf(client.generate({ text: "slow" }, { signal: abort.signal, timeoutMs: 20 })),
      ).toBe("DeadlineExceeded");
    }
    expect(getEventListeners(abort.signal, "abort")).toHaveLength(0);
    await app?.close();
    expect(await codeOf(client.generate({ text: "down" }, { signal: abort.signal }))).toBe(
      "Unavailable",
    );
    expect(getEventListeners(abort.signal, "abort")).toHaveLength(0);
  });

  it("refuses a call with a header Node cannot send, leaving no listener or deadline behind", async () => {
    const { client, seen } = await startCounting(0);
    const abort = new AbortController();
    // `Headers` lets a DEL through; Node's HTTP client refuses it.
    const call = client.generate(
      { text: "odd" },
      { signal: abort.signal, timeoutMs: 20, headers: { "x-note": "a\x7fb" } },
    );
    expect(await codeOf(call)).toBe("Internal");
    expect(getEventListeners(abort.signal, "abort")).toHaveLength(0);
    // The call's deadline passing later must not throw (it threw, uncaught, ending the process).
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(seen.calls).toBe(0);
  });
});
