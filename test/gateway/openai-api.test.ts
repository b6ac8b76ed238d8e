import { createClient, createRouterTransport } from "@connectrpc/connect";
import type { FastifyInstance } from "fastify";
import OpenAI, {
  APIError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  RateLimitError,
} from "openai";
import { afterEach, describe, expect, it } from "vitest";
import { FilterService } from "../../gen/chat/v1/filter_pb.js";
import { buildGateway } from "../../src/gateway/app.js";
import { countTokens } from "../../src/gateway/quota-cost.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createFilterService } from "../../src/services/filter/filter-service.js";
import { createTermMatcher } from "../../src/services/filter/terms.js";
import type { LlmBackend, LlmRequest } from "../../src/services/llm/backend.js";
import { createEchoBackend } from "../../src/services/llm/echo-backend.js";
import { createOpenAiBackend } from "../../src/services/llm/openai-backend.js";
import { startOpenAiTestDouble } from "../fixtures/openai-test-double.js";
import {
  breakingLlmBackend,
  createInProcessUpstreams,
  failingLlmBackend,
} from "../fixtures/upstreams.js";

let app: FastifyInstance;
let baseUrl: string;
afterEach(() => app?.close());

/** The gateway over in-process services, listening on a free port. */
async function gateway(
  options: Parameters<typeof createInProcessUpstreams>[0] = {},
  env: Record<string, string> = {},
) {
  app = await buildGateway({
    config: loadGatewayConfig({ MAX_TEXT_CHARS: "40", MAX_BODY_BYTES: "2048", ...env }),
    logger: createLogger("gateway", "silent"),
    upstreams: createInProcessUpstreams(options),
  });
  baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });
}

/** The echo stub, keeping what it is asked. */
function recordingEcho() {
  const echo = createEchoBackend();
  const requests: LlmRequest[] = [];
  const backend: LlmBackend = {
    name: echo.name,
    generate: (request, call) => {
      requests.push(request);
      return echo.generate(request, call);
    },
    stream: (request, signal) => {
      requests.push(request);
      return echo.stream(request, signal);
    },
  };
  return { backend, requests };
}

/** The official OpenAI SDK, pointed at the gateway. */
const sdk = (options: { maxRetries?: number; fetch?: typeof fetch } = {}) =>
  new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: "unused", maxRetries: 0, ...options });

const ask = (user: string | undefined, text: string) => ({
  model: "echo",
  messages: [{ role: "user" as const, content: text }],
  ...(user !== undefined && { user }),
});

/** A chat of user "u" with these messages, as they are (checked or not). */
const conversation = (...messages: object[]) => ({ model: "echo", user: "u", messages });

async function thrown(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error("expected the call to fail");
}

const quotaOf = async (user: string) =>
  (await (await fetch(`${baseUrl}/quota?user_id=${user}`)).json()) as { used: number };

const historyOf = async (user: string) =>
  (
    (await (await fetch(`${baseUrl}/history?user_id=${user}`)).json()) as {
      items: { text: string; reply: string }[];
    }
  ).items;

describe("the OpenAI-compatible API, driven by the official openai SDK", () => {
  it("answers a chat completion through Filter → Token → LLM, and keeps it in history", async () => {
    await gateway();
    const { data, response } = await sdk()
      .chat.completions.create(ask("u1", "Hello   world   from   Go!"))
      .withResponse();
    expect(data.id).toBe(`chatcmpl-${response.headers.get("x-request-id")}`);
    expect(data.object).toBe("chat.completion");
    expect(data.model).toBe("echo");
    expect(Math.abs(data.created - Date.now() / 1000)).toBeLessThan(60);
    expect(data.choices).toEqual([
      {
        index: 0,
        message: { role: "assistant", content: "Echo: Hello world from Go!", refusal: null },
        logprobs: null,
        finish_reason: "stop",
      },
    ]);
    const prompt = await countTokens("Hello world from Go!");
    const completion = await countTokens("Echo: Hello world from Go!");
    expect(data.usage).toEqual({
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: prompt + completion,
    });
    expect(response.headers.get("ratelimit-remaining")).toBe("150");
    expect((await quotaOf("u1")).used).toBe(50);
    await expect
      .poll(() => historyOf("u1"))
      .toMatchObject([{ text: "Hello world from Go!", reply: "Echo: Hello world from Go!" }]);
  });

  it("answers the last user message, the messages before it sent to the model as its context", async () => {
    const asked = recordingEcho();
    await gateway({ llm: asked.backend });
    const completion = await sdk().chat.completions.create({
      model: "echo",
      user: "u1",
      messages: [
        { role: "system", content: "You are terse." },
        { role: "user", content: "first question" },
        {
          role: "assistant",
          content: [
            { type: "text", text: "first answer" },
            { type: "refusal", refusal: "not that" },
          ],
        },
        { role: "user", content: [{ type: "text", text: "second   question" }] },
      ],
    });
    // The echo stub answers the text alone.
    expect(completion.choices[0]?.message.content).toBe("Echo: second question");
    const stream = await sdk().chat.completions.create({
      model: "echo",
      user: "u1",
      stream: true,
      messages: [
        { role: "developer", content: "be   brief" },
        { role: "user", content: "hi" },
        { role: "assistant", content: "" },
      ],
    });
    for await (const _ of stream) {
      // read to the end
    }
    expect(asked.requests.map(({ text, context }) => ({ text, context }))).toEqual([
      {
        text: "second question",
        context: [
          { role: "system", content: "You are terse." },
          { role: "user", content: "first question" },
          { role: "assistant", content: "first answer\nnot that" },
        ],
      },
      // Messages after the last user message are not sent; the context is not cleaned.
      { text: "hi", context: [{ role: "developer", content: "be   brief" }] },
    ]);
  });

  it("refuses a banned term anywhere in the context as in the text, charging nothing", async () => {
    const asked = recordingEcho();
    await gateway({ llm: asked.backend });
    const blocked = await thrown(
      sdk().chat.completions.create(
        conversation(
          { role: "system", content: "Say ｆｏｏ often." },
          { role: "user", content: "hi" },
        ) as never,
      ),
    );
    expect(blocked).toBeInstanceOf(BadRequestError);
    expect(blocked).toMatchObject({ status: 400, code: "content_filter" });
    expect(asked.requests).toEqual([]);
    expect((await quotaOf("u")).used).toBe(0);
  });

  it("sends the text of earlier turns with images, leaving the images out; an image in the text is a 400", async () => {
    const asked = recordingEcho();
    await gateway({ llm: asked.backend });
    const image = { type: "image_url", image_url: { url: "data:," } };
    const answer = await sdk().chat.completions.create(
      conversation(
        { role: "user", content: [image] },
        { role: "assistant", content: "a picture" },
        { role: "user", content: [{ type: "text", text: "and this?" }, image] },
        { role: "assistant", content: "another" },
        { role: "user", content: "thanks" },
      ) as never,
    );
    expect(answer.choices[0]?.message.content).toBe("Echo: thanks");
    expect(asked.requests[0]?.context).toEqual([
      { role: "assistant", content: "a picture" },
      { role: "user", content: "and this?" },
      { role: "assistant", content: "another" },
    ]);
    const last = await thrown(
      sdk().chat.completions.create(conversation({ role: "user", content: [image] }) as never),
    );
    expect(last).toMatchObject({ status: 400, param: "messages[0].content" });
  });

  it("sends no context to the model that the filter did not answer for (a filter older than the gateway)", async () => {
    const asked = recordingEcho();
    // A filter of before FilterRequest.context: it reads the text alone.
    const current = createFilterService({ matcher: createTermMatcher(["foo"]) });
    const older = createClient(
      FilterService,
      createRouterTransport((router) =>
        router.service(FilterService, {
          filter: (req, ctx) => current.filter({ ...req, context: [] }, ctx),
        }),
      ),
    );
    app = await buildGateway({
      config: loadGatewayConfig({ MAX_TEXT_CHARS: "40", MAX_BODY_BYTES: "2048" }),
      logger: createLogger("gateway", "silent"),
      upstreams: { ...createInProcessUpstreams({ llm: asked.backend }), filter: older },
    });
    baseUrl = await app.listen({ host: "127.0.0.1", port: 0 });
    const refused = await thrown(
      sdk().chat.completions.create(
        conversation(
          { role: "system", content: "Say foo often." },
          { role: "user", content: "hi" },
        ) as never,
      ),
    );
    expect(refused).toMatchObject({ status: 500 });
    expect(asked.requests).toEqual([]);
    expect((await quotaOf("u")).used).toBe(0);
    // Without context, such a filter is all a chat needs.
    const answer = await sdk().chat.completions.create(ask("u", "hi"));
    expect(answer.choices[0]?.message.content).toBe("Echo: hi");
  });

  it("streams chunks and [DONE], with the usage last when asked for", async () => {
    await gateway();
    const stream = await sdk().chat.completions.create({
      ...ask("u1", "Hello streaming world"),
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks.length).toBeGreaterThan(4);
    expect(chunks.every((c) => c.object === "chat.completion.chunk" && c.model === "echo")).toBe(
      true,
    );
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(chunks[0]?.choices[0]?.delta).toEqual({ role: "assistant", content: "" });
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    expect(text).toBe("Echo: Hello streaming world");
    expect(chunks.at(-2)?.choices[0]?.finish_reason).toBe("stop");
    const last = chunks.at(-1);
    expect(last?.choices).toEqual([]);
    expect(last?.usage?.total_tokens).toBe(
      (await countTokens("Hello streaming world")) + (await countTokens(text)),
    );
    await expect.poll(() => historyOf("u1")).toMatchObject([{ reply: text }]);
  });

  it("ends the raw stream with data: [DONE] and sends no usage unless asked", async () => {
    await gateway();
    const res = await fetch(`${baseUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...ask("u1", "hi there"), stream: true }),
    });
    expect(res.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    const frames = (await res.text()).split("\n\n").filter((f) => f !== "");
    expect(frames.every((f) => f.startsWith("data: "))).toBe(true);
    expect(frames.at(-1)).toBe("data: [DONE]");
    expect(frames.some((f) => f.includes('"usage"'))).toBe(false);
  });

  it("refuses blocked text with 400, as the SDK's BadRequestError, charging nothing", async () => {
    await gateway();
    const err = await thrown(sdk().chat.completions.create(ask("u1", "this has foo inside")));
    expect(err).toBeInstanceOf(BadRequestError);
    expect(err).toMatchObject({
      status: 400,
      type: "invalid_request_error",
      code: "content_filter",
      param: "messages",
      error: { message: "text blocked by filter" },
    });
    expect((await quotaOf("u1")).used).toBe(0);
  });

  it("refuses a chat over the quota with 429 insufficient_quota, once: the SDK does not retry", async () => {
    await gateway();
    let requests = 0;
    const counting: typeof fetch = (input, init) => {
      requests++;
      return fetch(input, init);
    };
    // The SDK's default retries are on: a daily quota must not be retried.
    const client = sdk({ maxRetries: 2, fetch: counting });
    for (let i = 0; i < 4; i++) await client.chat.completions.create(ask("u2", "quick call"));
    const err = await thrown(client.chat.completions.create(ask("u2", "quick call")));
    expect(err).toBeInstanceOf(RateLimitError);
    expect(err).toMatchObject({
      status: 429,
      type: "insufficient_quota",
      code: "insufficient_quota",
    });
    expect((err as RateLimitError).headers.get("ratelimit-remaining")).toBe("0");
    expect(requests).toBe(5);
    const stream = thrown(client.chat.completions.create({ ...ask("u2", "more"), stream: true }));
    expect(await stream).toBeInstanceOf(RateLimitError);
  });

  it.each([
    ["no user", { model: "echo", messages: [{ role: "user", content: "hi" }] }, "user", null],
    ["a user with a lone surrogate", ask("\ud800", "hi"), "user", null],
    ["an empty user", ask("", "hi"), "user", null],
    ["a user over 256 characters", ask("x".repeat(257), "hi"), "user", null],
    ["no model", { messages: [{ role: "user", content: "hi" }], user: "u" }, "model", null],
    ["no messages", { model: "echo", messages: [], user: "u" }, "messages", null],
    [
      "no user message",
      { model: "echo", messages: [{ role: "system", content: "hi" }], user: "u" },
      "messages",
      null,
    ],
    [
      "an image part",
      {
        model: "echo",
        user: "u",
        messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }],
      },
      "messages[0].content",
      null,
    ],
    ["a blank text", ask("u", "   "), "messages", null],
    ["a text too long", ask("u", "x".repeat(41)), "messages", "context_length_exceeded"],
    ["n=2", { ...ask("u", "hi"), n: 2 }, "n", null],
    ["an n that is a string", { ...ask("u", "hi"), n: "1" }, "n", "invalid_type"],
    ["an n that is a fraction", { ...ask("u", "hi"), n: 1.5 }, "n", "invalid_type"],
    ["max_tokens 0", { ...ask("u", "hi"), max_tokens: 0 }, "max_tokens", null],
    [
      "stream_options without stream",
      { ...ask("u", "hi"), stream_options: { include_usage: true } },
      "stream_options",
      null,
    ],
    [
      "a temperature that is a word",
      { ...ask("u", "hi"), temperature: "hot" },
      "temperature",
      "invalid_type",
    ],
    ["a temperature over 2", { ...ask("u", "hi"), temperature: 5 }, "temperature", "invalid_type"],
    [
      "a stop of five strings",
      { ...ask("u", "hi"), stop: ["a", "b", "c", "d", "e"] },
      "stop",
      "invalid_type",
    ],
    ["a stop that is a number", { ...ask("u", "hi"), stop: 5 }, "stop", "invalid_type"],
    [
      "a role that does not exist",
      conversation({ role: "wizard", content: "x" }, { role: "user", content: "hi" }),
      "messages[0].role",
      "invalid_value",
    ],
    [
      "a tool message without tool_call_id",
      conversation({ role: "user", content: "hi" }, { role: "tool", content: "42" }),
      "messages[1].tool_call_id",
      "invalid_type",
    ],
    [
      "a system message whose content is a number",
      conversation({ role: "system", content: 5 }, { role: "user", content: "hi" }),
      "messages[0].content",
      "invalid_type",
    ],
    [
      "a safety_identifier over 256 characters, standing for the user",
      {
        model: "echo",
        messages: [{ role: "user", content: "hi" }],
        safety_identifier: "x".repeat(257),
      },
      "safety_identifier",
      null,
    ],
  ])("refuses %s with 400 in OpenAI's error shape", async (_case, body, param, code) => {
    await gateway();
    const err = await thrown(
      sdk().chat.completions.create(body as OpenAI.ChatCompletionCreateParamsNonStreaming),
    );
    expect(err).toBeInstanceOf(BadRequestError);
    expect(err).toMatchObject({ status: 400, type: "invalid_request_error", param, code });
  });

  it("takes what OpenAI takes: sampling and tool parameters, tool turns, a server's own parameters", async () => {
    const asked = recordingEcho();
    await gateway({ llm: asked.backend });
    const answer = await sdk().chat.completions.create({
      model: "echo",
      user: "params",
      messages: [
        { role: "developer", content: "be brief" },
        { role: "user", content: "what is 6 × 7?" },
        {
          role: "assistant",
          content: null,
          tool_calls: [
            { id: "call_1", type: "function", function: { name: "multiply", arguments: "{}" } },
          ],
        },
        { role: "tool", tool_call_id: "call_1", content: "42" },
        { role: "user", content: [{ type: "text", text: "thanks" }] },
      ],
      temperature: 0.2,
      top_p: 1,
      seed: 7,
      stop: ["\n\n"],
      presence_penalty: -1,
      logprobs: false,
      tools: [{ type: "function", function: { name: "multiply", parameters: {} } }],
      tool_choice: "auto",
      response_format: { type: "text" },
      stream_options: null,
      // vLLM's and Ollama's own sampling parameter.
      ...({ top_k: 40 } as object),
    });
    expect(answer.choices[0]?.message.content).toBe("Echo: thanks");
    // The sampling parameters go to the model; the tools' do not.
    expect(asked.requests[0]?.sampling).toEqual({
      temperature: 0.2,
      topP: 1,
      stop: ["\n\n"],
      seed: 7,
      presencePenalty: -1,
    });
    // Tool calls and their results are not sent to the model: it answers with text only.
    expect(asked.requests[0]?.context).toEqual([
      { role: "developer", content: "be brief" },
      { role: "user", content: "what is 6 × 7?" },
    ]);
  });

  it.each([
    ["a tool call", { tool_choice: "required" }, "tool_choice"],
    [
      "a named function",
      { tool_choice: { type: "function", function: { name: "multiply" } } },
      "tool_choice",
    ],
    ["log probabilities", { logprobs: true }, "logprobs"],
    [
      "a named function, the legacy way",
      { functions: [{ name: "multiply", parameters: {} }], function_call: { name: "multiply" } },
      "function_call",
    ],
  ])(
    "refuses a request that demands %s, which no answer here has, charging nothing",
    async (_case, demand, param) => {
      await gateway();
      const tools = [{ type: "function", function: { name: "multiply", parameters: {} } }];
      const err = await thrown(
        sdk().chat.completions.create({ ...ask("demands", "hi"), tools, ...demand } as never),
      );
      expect(err).toBeInstanceOf(BadRequestError);
      expect(err).toMatchObject({ status: 400, param, code: "unsupported_value" });
      expect((await quotaOf("demands")).used).toBe(0);
    },
  );

  it("passes response_format on; the echo stub, which cannot answer JSON, is a 400, the charge given back", async () => {
    const asked = recordingEcho();
    await gateway({ llm: asked.backend });
    const schema = { name: "answer", schema: { type: "object" }, strict: true };
    for (const format of [
      { type: "json_object" },
      { type: "json_schema", json_schema: schema },
    ] as const) {
      const err = await thrown(
        sdk().chat.completions.create({ ...ask("json", "hi"), response_format: format }),
      );
      expect(err).toBeInstanceOf(BadRequestError);
      expect(err).toMatchObject({
        status: 400,
        param: "response_format",
        code: "unsupported_value",
        error: { message: "response_format not supported by the model" },
      });
      const streamed = await thrown(
        sdk().chat.completions.create({
          ...ask("json", "hi"),
          response_format: format,
          stream: true,
        }),
      );
      expect(streamed).toMatchObject({ status: 400, param: "response_format" });
    }
    expect(asked.requests).toEqual([]);
    expect((await quotaOf("json")).used).toBe(0);
    // Text is text, for the echo stub too.
    const text = await sdk().chat.completions.create({
      ...ask("json", "hi"),
      response_format: { type: "text" },
    });
    expect(text.choices[0]?.message.content).toBe("Echo: hi");
  });

  it.each([
    [{ type: "yaml" }, "response_format.type", "invalid_value"],
    [{}, "response_format.type", "missing_required_parameter"],
    [{ type: "json_schema" }, "response_format.json_schema", "missing_required_parameter"],
    [
      { type: "json_schema", json_schema: { schema: {} } },
      "response_format.json_schema.name",
      "missing_required_parameter",
    ],
  ])("refuses response_format %j as OpenAI does, charging nothing", async (format, param, code) => {
    await gateway();
    const err = await thrown(
      sdk().chat.completions.create({
        ...ask("bad-format", "hi"),
        response_format: format,
      } as never),
    );
    expect(err).toMatchObject({ status: 400, param, code });
    expect((await quotaOf("bad-format")).used).toBe(0);
  });

  it("answers a model server's refusal of response_format (a schema it will not take) with a 400 naming it, the charge given back", async () => {
    const double = await startOpenAiTestDouble();
    try {
      const llm = createOpenAiBackend({
        baseUrl: double.baseUrl,
        apiKey: "",
        model: "test-double-model",
        timeoutMs: 10_000,
      });
      await gateway({ llm });
      // OpenAI refuses a strict schema whose root is no object: the caller's to change.
      const response_format = {
        type: "json_schema" as const,
        json_schema: { name: "list", strict: true, schema: { type: "array" } },
      };
      // The SDK's defaults: a 5xx would be asked twice more.
      const client = sdk({ maxRetries: 2 });
      const unary = await thrown(
        client.chat.completions.create({ ...ask("schema", "hi"), response_format }),
      );
      expect(unary).toBeInstanceOf(BadRequestError);
      expect(unary).toMatchObject({
        status: 400,
        type: "invalid_request_error",
        param: "response_format",
        code: "unsupported_value",
      });
      const streamed = await thrown(
        client.chat.completions.create({ ...ask("schema", "hi"), response_format, stream: true }),
      );
      expect(streamed).toMatchObject({ status: 400, param: "response_format" });
      // Asked once each, not retried; nothing charged, nothing kept.
      expect(double.requests.length).toBe(2);
      expect((await quotaOf("schema")).used).toBe(0);
      expect(await historyOf("schema")).toEqual([]);
      const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
      expect(metrics).toContain(
        'chatmesh_chats_total{outcome="response_format_not_supported_by_the_model"} 2',
      );
    } finally {
      await double.close();
    }
  });

  it("takes safety_identifier as the user when there is no user field", async () => {
    await gateway();
    const answer = await sdk().chat.completions.create({
      model: "echo",
      messages: [{ role: "user", content: "hi" }],
      safety_identifier: "safe-1",
    });
    expect(answer.choices[0]?.message.content).toBe("Echo: hi");
    expect(await historyOf("safe-1")).toMatchObject([{ text: "hi", reply: "Echo: hi" }]);
    // The user field, when there is one, is the user.
    await sdk().chat.completions.create({ ...ask("named", "hello"), safety_identifier: "safe-1" });
    expect(await historyOf("named")).toMatchObject([{ text: "hello" }]);
    expect(await historyOf("safe-1")).toHaveLength(1);
  });

  it.each([
    ["not JSON", Buffer.from('{"model":"echo",')],
    ["not UTF-8", Buffer.from([...Buffer.from('{"model":"echo","user":"X'), 0xff, 0x22, 0x7d])],
  ])("refuses a body %s with 400 invalid_request_error", async (_case, body) => {
    await gateway();
    const res = await fetch(`${baseUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    expect([res.status, await res.json()]).toEqual([
      400,
      {
        error: {
          message: "request body is not valid JSON",
          type: "invalid_request_error",
          param: null,
          code: null,
        },
      },
    ]);
  });

  it("counts /v1 chats with /chat's, by bounded outcomes", async () => {
    await gateway();
    await sdk().chat.completions.create(ask("m1", "hi"));
    await thrown(sdk().chat.completions.create(ask("m1", "has foo")));
    await thrown(
      sdk().chat.completions.create({
        model: "echo",
        user: "m1",
        messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }],
      }),
    );
    for (const headers of [
      { "content-type": "text/plain" },
      { "content-type": "application/json; charset=latin1" },
      { "content-type": "application/json", "content-encoding": "gzip" },
    ]) {
      const res = await fetch(`${baseUrl}/v1/chat/completions`, {
        method: "POST",
        headers,
        body: JSON.stringify(ask("m1", "hi")),
      });
      expect(res.status).toBe(415);
    }
    const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
    expect(metrics).toContain(
      'chatmesh_chats_total{outcome="content-type_must_be_application/json"} 2',
    );
    expect(metrics).toContain('chatmesh_chats_total{outcome="content-encoding_not_supported"} 1');
    expect(metrics).toContain('chatmesh_chats_total{outcome="ok"} 1');
    expect(metrics).toContain('chatmesh_chats_total{outcome="text_blocked_by_filter"} 1');
    expect(metrics).toContain('chatmesh_chats_total{outcome="bad_request"} 1');
  });

  it("answers 500 server_error when the model fails, and gives the charge back", async () => {
    await gateway({ llm: failingLlmBackend });
    const err = await thrown(sdk().chat.completions.create(ask("u3", "hi")));
    expect(err).toBeInstanceOf(InternalServerError);
    expect(err).toMatchObject({ status: 500, type: "server_error", message: "500 llm failed" });
    expect((await quotaOf("u3")).used).toBe(0);
  });

  it("answers a stream whose model fails before its first piece with 500, as OpenAI does", async () => {
    await gateway({ llm: failingLlmBackend });
    const err = await thrown(sdk().chat.completions.create({ ...ask("u3", "hi"), stream: true }));
    expect(err).toBeInstanceOf(InternalServerError);
    expect(err).toMatchObject({ status: 500, type: "server_error", message: "500 llm failed" });
    // The charge was given back: no quota headers of before it.
    expect((err as APIError).headers?.get("ratelimit-remaining")).toBeNull();
    expect((err as APIError).headers?.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
    expect((await quotaOf("u3")).used).toBe(0);
  });

  it("ends a stream whose model breaks with an error event the SDK throws, refunded", async () => {
    await gateway({ llm: breakingLlmBackend });
    const stream = await sdk().chat.completions.create({ ...ask("u3", "hi"), stream: true });
    const seen: string[] = [];
    const err = await thrown(
      (async () => {
        for await (const chunk of stream) seen.push(chunk.choices[0]?.delta.content ?? "");
      })(),
    );
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).type).toBe("server_error");
    expect(seen.join("")).toBe("Echo: half ");
    expect((await quotaOf("u3")).used).toBe(0);
  });

  it("lists the LLM service's model and retrieves it; another model is not found", async () => {
    await gateway();
    const models = [];
    for await (const model of sdk().models.list()) models.push(model);
    expect(models).toEqual([{ id: "echo", object: "model", created: 0, owned_by: "chatmesh" }]);
    expect((await sdk().models.retrieve("echo")).id).toBe("echo");
    const err = await thrown(sdk().models.retrieve("gpt-4o"));
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err).toMatchObject({ code: "model_not_found" });
  });

  it("answers a method a path is not served with as OpenAI does: 404 unknown_url", async () => {
    await gateway();
    const res = await fetch(`${baseUrl}/v1/chat/completions`);
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({
      error: {
        type: "invalid_request_error",
        code: "unknown_url",
        message: "Unknown request URL: GET /v1/chat/completions",
      },
    });
  });

  it.each([
    ["an unknown path", "/v1/nope", "application/json", "{}", 404, "unknown_url"],
    ["bad JSON", "/v1/chat/completions", "application/json", "{nope", 400, null],
    [
      "a body too large",
      "/v1/chat/completions",
      "application/json",
      "x".repeat(4000),
      413,
      "request_too_large",
    ],
    ["a body not JSON", "/v1/chat/completions", "text/plain", "hi", 415, null],
  ])("answers %s in OpenAI's error shape", async (_case, path, type, body, status, code) => {
    await gateway();
    const res = await fetch(`${baseUrl}${path}`, {
      method: "POST",
      headers: { "content-type": type },
      body,
    });
    expect(res.status).toBe(status);
    const json = (await res.json()) as { error: Record<string, unknown> };
    expect(json.error).toMatchObject({ type: "invalid_request_error", code });
    expect(typeof json.error.message).toBe("string");
  });
});

describe("the OpenAI-compatible API with QUOTA_COST_MODE=tokens", () => {
  const tokens = { QUOTA_COST_MODE: "tokens", QUOTA_REPLY_RESERVE: "20" };

  it("charges what the chat used, reported back in usage and in the quota", async () => {
    await gateway({}, tokens);
    const { data, response } = await sdk()
      .chat.completions.create(ask("t1", "Hello world from Go!"))
      .withResponse();
    const used = data.usage?.total_tokens ?? 0;
    expect(used).toBeGreaterThan(5);
    expect((await quotaOf("t1")).used).toBe(used);
    expect(response.headers.get("ratelimit-remaining")).toBe(String(200 - used));
  });

  it("counts the context in the prompt's tokens: reserved, reported and charged", async () => {
    await gateway({}, tokens);
    const completion = await sdk().chat.completions.create({
      ...conversation(
        { role: "system", content: "You are terse." },
        { role: "user", content: "first question" },
        { role: "assistant", content: "first answer" },
        { role: "user", content: "second   question" },
      ),
      user: "t3",
    } as never);
    const prompt = await countTokens(
      "You are terse.\nfirst question\nfirst answer\nsecond question",
    );
    expect(completion.usage?.prompt_tokens).toBe(prompt);
    expect(completion.usage?.total_tokens).toBe(
      prompt + (await countTokens("Echo: second question")),
    );
    expect((await quotaOf("t3")).used).toBe(completion.usage?.total_tokens);
  });

  it("settles streamed chats too", async () => {
    await gateway({}, tokens);
    const stream = await sdk().chat.completions.create({
      ...ask("t2", "Hello streaming world"),
      stream: true,
      stream_options: { include_usage: true },
    });
    let used = 0;
    for await (const chunk of stream) used = chunk.usage?.total_tokens ?? used;
    expect(used).toBeGreaterThan(5);
    expect((await quotaOf("t2")).used).toBe(used);
  });

  it("prices /chat by tokens as well: remaining is what is left after the settled chat", async () => {
    await gateway({}, tokens);
    const res = await fetch(`${baseUrl}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "t3", text: "Hello world from Go!" }),
    });
    const used =
      (await countTokens("Hello world from Go!")) +
      (await countTokens("Echo: Hello world from Go!"));
    expect(await res.json()).toMatchObject({ remaining: 200 - used });
    expect((await quotaOf("t3")).used).toBe(used);
  });

  it("refuses a chat whose reservation does not fit, though a smaller max_tokens does", async () => {
    await gateway({}, { QUOTA_COST_MODE: "tokens", QUOTA_REPLY_RESERVE: "199" });
    const err = await thrown(sdk().chat.completions.create(ask("t4", "Hello world from Go!")));
    expect(err).toBeInstanceOf(RateLimitError);
    expect((await quotaOf("t4")).used).toBe(0);
    const ok = await sdk().chat.completions.create({ ...ask("t4", "Hello world"), max_tokens: 10 });
    expect((await quotaOf("t4")).used).toBe(ok.usage?.total_tokens);
  });
});
