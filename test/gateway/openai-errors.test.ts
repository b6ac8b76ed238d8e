import type { FastifyInstance } from "fastify";
import OpenAI, { AuthenticationError, RateLimitError } from "openai";
import { afterEach, describe, expect, it } from "vitest";
import { openAiErrorFrom } from "../../src/gateway/openai/errors.js";
import { registerOpenAiApi } from "../../src/gateway/openai/routes.js";
import { createHttpApp } from "../../src/lib/http-app.js";
import { createLogger } from "../../src/lib/logger.js";
import { createMetricsRegistry } from "../../src/lib/metrics.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

describe("the gateway's errors in OpenAI's terms", () => {
  it.each([
    [400, "text blocked by filter", "invalid_request_error", "messages", "content_filter"],
    [400, "text too long", "invalid_request_error", "messages", "context_length_exceeded"],
    [401, "invalid api key", "invalid_request_error", null, "invalid_api_key"],
    [429, "quota exceeded", "insufficient_quota", null, "insufficient_quota"],
    [429, "rate limited", "rate_limit_exceeded", null, "rate_limit_exceeded"],
    [500, "llm failed", "server_error", null, null],
    [500, "token failed", "server_error", null, null],
  ])("%i %s → type %s, param %s, code %s", (status, words, type, param, code) => {
    expect(openAiErrorFrom({ status, body: { error: words } })).toEqual({
      status,
      body: { error: { message: words, type, param, code } },
    });
  });
});

describe("errors sent by hooks shared with the rest of the gateway", () => {
  let app: FastifyInstance;
  afterEach(() => app?.close());

  it("reach /v1 clients in OpenAI's shape (an API key check, a rate limit)", async () => {
    const logger = createLogger("gateway", "silent");
    app = createHttpApp({ logger, registry: createMetricsRegistry(), requestId: () => "r" });
    // Stands in for the gateway's API key check and rate limit, which answer in its own shape.
    app.addHook("onRequest", async (req, reply) => {
      if (req.headers.authorization === "Bearer wrong") {
        return reply.code(401).send({ error: "invalid api key" });
      }
      if (req.headers.authorization === "Bearer busy") {
        return reply.code(429).header("retry-after", "0").send({ error: "rate limited" });
      }
    });
    await registerOpenAiApi(app, {
      upstreams: createInProcessUpstreams(),
      logger,
      maxTextChars: 100,
    });
    const baseURL = `${await app.listen({ host: "127.0.0.1", port: 0 })}/v1`;
    const ask = (apiKey: string) =>
      new OpenAI({ baseURL, apiKey, maxRetries: 0 }).chat.completions.create({
        model: "echo",
        user: "u1",
        messages: [{ role: "user", content: "hi" }],
      });
    const wrong = await ask("wrong").catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(AuthenticationError);
    expect(wrong).toMatchObject({ status: 401, code: "invalid_api_key" });
    const busy = await ask("busy").catch((e: unknown) => e);
    expect(busy).toBeInstanceOf(RateLimitError);
    expect(busy).toMatchObject({ type: "rate_limit_exceeded", code: "rate_limit_exceeded" });
    expect((await ask("right")).choices[0]?.message.content).toBe("Echo: hi");
  });
});
