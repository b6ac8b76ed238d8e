import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type OpenAiTestDouble, startOpenAiTestDouble } from "../fixtures/openai-test-double.js";
import { startAllInOne, startStack } from "../fixtures/processes.js";

/** A running chain: where its gateway is, and what stops it. */
interface Chain {
  readonly gatewayUrl: string;
  stop(): Promise<void>;
}

/**
 * A unary chat whose client leaves before its answer, through each
 * transport between the gateway and the llm, and in one process: the model
 * server (the test double standing in for a paid API) sees its request
 * closed.
 */
describe.each(["frames", "connect", "grpc", "all"] as const)(
  "a unary chat left by its client, with UPSTREAM_PROTOCOL=%s (all: chatmesh all)",
  (protocol) => {
    let double: OpenAiTestDouble;
    let stack: Chain;
    beforeAll(async () => {
      double = await startOpenAiTestDouble({ model: "double" });
      const env = {
        LLM_BACKEND: "openai",
        OPENAI_BASE_URL: double.baseUrl,
        LLM_MODEL: "double",
        LLM_TIMEOUT_MS: "20000",
      };
      if (protocol === "all") {
        const all = await startAllInOne(env);
        stack = { gatewayUrl: all.url, stop: () => all.stop() };
      } else {
        const chain = await startStack({ ...env, UPSTREAM_PROTOCOL: protocol });
        stack = { gatewayUrl: chain.gatewayUrl, stop: () => chain.stopAll() };
      }
    });
    afterAll(async () => {
      await stack?.stop();
      await double?.close();
    });

    it.each([
      ["/chat", { user_id: "gone", text: "hang" }],
      [
        "/v1/chat/completions",
        { model: "double", user: "gone", messages: [{ role: "user", content: "hang" }] },
      ],
    ])("on %s closes the model server's request", async (path, body) => {
      const goneBefore = double.clientsGone();
      const countedBefore = await countedGone();
      const requestsBefore = double.requests.length;
      const client = new AbortController();
      const call = fetch(`${stack.gatewayUrl}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: client.signal,
      }).catch((err: unknown) => err);
      await expect
        .poll(() => double.requests.length, { timeout: 5_000, interval: 20 })
        .toBe(requestsBefore + 1);
      client.abort();
      expect(await call).toBeInstanceOf(Error);
      // Without the cancel the model server would hold the request until the 20 s deadline.
      await expect
        .poll(() => double.clientsGone(), { timeout: 2_000, interval: 20 })
        .toBe(goneBefore + 1);
      await expect.poll(countedGone, { timeout: 2_000, interval: 50 }).toBe(countedBefore + 1);
    });

    /** The gateway's chatmesh_chats_total{outcome="client_gone"}. */
    const countedGone = async () => {
      const metrics = await (await fetch(`${stack.gatewayUrl}/metrics`)).text();
      return Number(
        /^chatmesh_chats_total\{outcome="client_gone"\} (\d+)$/m.exec(metrics)?.[1] ?? 0,
      );
    };
  },
);
