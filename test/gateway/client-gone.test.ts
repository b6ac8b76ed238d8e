import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import type { LlmBackend } from "../../src/services/llm/backend.js";
import { createMemoryQuotaStore } from "../../src/services/token/memory-store.js";
import type { QuotaStore } from "../../src/services/token/quota-store.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

let app: FastifyInstance;
afterEach(() => app?.close());

/** A test double of a slow model server: answers after 3 s, stops when its call is cancelled. */
function slowModel() {
  const seen: { cancelledAt?: number } = {};
  const backend: LlmBackend = {
    name: "slow (test double)",
    generate: (request, call) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => resolve({ reply: `Echo: ${request.text}` }), 3_000);
        call.signal.addEventListener("abort", () => {
          seen.cancelledAt = Date.now();
          clearTimeout(timer);
          reject(call.signal.reason);
        });
      }),
    async *stream() {
      yield "unused";
    },
  };
  return { backend, seen };
}

describe("a unary chat whose client goes away before its answer", () => {
  it.each([
    ["/chat", { user_id: "gone", text: "hi" }],
    [
      "/v1/chat/completions",
      { model: "slow", user: "gone", messages: [{ role: "user", content: "hi" }] },
    ],
  ])(
    "on %s cancels the model call, keeps the charge and nothing in history",
    async (path, body) => {
      const { backend, seen } = slowModel();
      app = await buildGateway({
        config: loadGatewayConfig({}),
        logger: createLogger("gateway", "silent"),
        upstreams: createInProcessUpstreams({ llm: backend }),
      });
      const baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });
      const controller = new AbortController();
      const call = fetch(`${baseUrl}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      }).catch((err: unknown) => err);
      await new Promise((resolve) => setTimeout(resolve, 200));
      const leftAt = Date.now();
      controller.abort();
      await call;
      await expect.poll(() => seen.cancelledAt, { timeout: 2_000, interval: 10 }).toBeDefined();
      expect((seen.cancelledAt as number) - leftAt).toBeLessThan(500);
      const quota = await (await fetch(`${baseUrl}/quota?user_id=gone`)).json();
      expect(quota).toMatchObject({ used: 50 });
      const history = await (await fetch(`${baseUrl}/history?user_id=gone`)).json();
      expect(history).toEqual({ items: [], next_page_token: "" });
      const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
      expect(metrics).toContain('chatmesh_chats_total{outcome="client_gone"} 1');
    },
  );
});

describe("a unary chat whose client goes away before the model call", () => {
  it("makes no model call and gives the charge back", async () => {
    const { backend, seen } = slowModel();
    const calls = { generate: 0 };
    const counted: LlmBackend = {
      ...backend,
      generate: (request, call) => {
        calls.generate++;
        return backend.generate(request, call);
      },
    };
    // Token answers a charge after 500 ms: the client leaves meanwhile.
    const memory = createMemoryQuotaStore();
    const slowStore: QuotaStore = {
      ...memory,
      charge: async (input) => {
        const result = await memory.charge(input);
        await new Promise((resolve) => setTimeout(resolve, 500));
        return result;
      },
    };
    app = await buildGateway({
      config: loadGatewayConfig({}),
      logger: createLogger("gateway", "silent"),
      upstreams: createInProcessUpstreams({ llm: counted, store: slowStore }),
    });
    const baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });
    const controller = new AbortController();
    const call = fetch(`${baseUrl}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "early", text: "hi" }),
      signal: controller.signal,
    }).catch((err: unknown) => err);
    await new Promise((resolve) => setTimeout(resolve, 200));
    controller.abort();
    await call;
    const metrics = async () => (await fetch(`${baseUrl}/metrics`)).text();
    await expect
      .poll(metrics, { timeout: 2_000, interval: 20 })
      .toContain('chatmesh_chats_total{outcome="client_gone"} 1');
    const quota = await (await fetch(`${baseUrl}/quota?user_id=early`)).json();
    expect(quota).toMatchObject({ used: 0 });
    expect(calls.generate).toBe(0);
    expect(seen.cancelledAt).toBeUndefined();
  });
});
