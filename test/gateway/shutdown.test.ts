import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createEchoBackend } from "../../src/services/llm/echo-backend.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

let app: FastifyInstance | undefined;
afterEach(() => app?.close());

describe("gateway shutdown with model calls still running", () => {
  it("cancels them before its time is up, gives their charges back and answers them 500", async () => {
    // A model far slower than the shutdown allows.
    const upstreams = createInProcessUpstreams({ llm: createEchoBackend({ delayMs: 60_000 }) });
    app = await buildGateway({
      config: loadGatewayConfig({ SHUTDOWN_TIMEOUT_MS: "2000", TOKEN_TIMEOUT_MS: "200" }),
      logger: createLogger("gateway", "silent"),
      upstreams,
    });
    const url = await app.listen({ host: "127.0.0.1", port: 0 });
    const post = (path: string, user: string) =>
      fetch(`${url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ user_id: user, text: "hi" }),
      });
    const used = async (user: string) =>
      Number((await upstreams.token.getQuota({ userId: user })).used);
    const chat = post("/chat", "plain");
    const stream = post("/chat/stream", "streamed");
    const completion = fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "echo",
        user: "sdk",
        messages: [{ role: "user", content: "hi" }],
      }),
    });
    await expect
      .poll(async () => [await used("plain"), await used("streamed"), await used("sdk")])
      .toEqual([50, 50, 50]);

    const started = Date.now();
    const closing = app.close();
    const answers = await Promise.all([chat, stream, completion]);
    expect(answers.map((res) => res.status)).toEqual([500, 500, 500]);
    expect(await answers[0]?.json()).toEqual({ error: "llm failed" });
    expect(await answers[1]?.json()).toEqual({ error: "llm failed" });
    expect(await answers[2]?.json()).toMatchObject({ error: { type: "server_error" } });
    // Cancelled with the time for refunds left, not at the end.
    expect(Date.now() - started).toBeLessThan(1_900);
    await closing;
    app = undefined;
    expect([await used("plain"), await used("streamed"), await used("sdk")]).toEqual([0, 0, 0]);
  });
});
