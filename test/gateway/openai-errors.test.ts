import type { FastifyInstance } from "fastify";
import OpenAI, { AuthenticationError, RateLimitError } from "openai";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { createApiKeys, parseApiKeys } from "../../src/gateway/auth.js";
import { openAiErrorFrom } from "../../src/gateway/openai/errors.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
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

  it("reach /v1 clients in OpenAI's shape: the API key check, the rate limit", async () => {
    const aliceKey = "alice-key-0123456789abcdef";
    app = await buildGateway({
      config: loadGatewayConfig({ RATE_LIMIT_PER_MINUTE: "2" }),
      logger: createLogger("gateway", "silent"),
      upstreams: createInProcessUpstreams(),
      apiKeys: createApiKeys(parseApiKeys(`${aliceKey} alice\n`)),
    });
    const baseURL = `${await app.listen({ host: "127.0.0.1", port: 0 })}/v1`;
    const client = (apiKey: string) => new OpenAI({ baseURL, apiKey, maxRetries: 0 });
    const ask = (apiKey: string) =>
      client(apiKey).chat.completions.create({
        model: "echo",
        messages: [{ role: "user", content: "hi" }],
      });
    const wrong = await ask("wrong-key-0123456789abcdef").catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(AuthenticationError);
    expect(wrong).toMatchObject({ status: 401, code: "invalid_api_key" });
    expect((await ask(aliceKey)).choices[0]?.message.content).toBe("Echo: hi");
    expect((await client(aliceKey).models.list()).data.map((m) => m.id)).toEqual(["echo"]);
    // The third request of the minute, on either route.
    for (const third of [() => ask(aliceKey), () => client(aliceKey).models.list()]) {
      const limited = await third().catch((e: unknown) => e);
      expect(limited).toBeInstanceOf(RateLimitError);
      expect(limited).toMatchObject({
        status: 429,
        type: "rate_limit_exceeded",
        code: "rate_limit_exceeded",
      });
    }
  });

  it("say a user field naming someone else than the key's user does not match it", async () => {
    const aliceKey = "alice-key-0123456789abcdef";
    app = await buildGateway({
      config: loadGatewayConfig({}),
      logger: createLogger("gateway", "silent"),
      upstreams: createInProcessUpstreams(),
      apiKeys: createApiKeys(parseApiKeys(`${aliceKey} alice\n`)),
    });
    const baseURL = `${await app.listen({ host: "127.0.0.1", port: 0 })}/v1`;
    const client = new OpenAI({ baseURL, apiKey: aliceKey, maxRetries: 0 });
    const ask = (user: string) =>
      client.chat.completions.create({
        model: "echo",
        user,
        messages: [{ role: "user", content: "hi" }],
      });
    expect(await ask("end-user-123").catch((e: unknown) => e)).toMatchObject({
      status: 400,
      param: "user",
      message: expect.stringContaining("user does not match the api key"),
    });
    expect((await ask("alice")).choices[0]?.message.content).toBe("Echo: hi");
  });
});
