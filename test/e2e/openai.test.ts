import OpenAI, { APIError, BadRequestError, InternalServerError, RateLimitError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type OpenAiTestDouble, startOpenAiTestDouble } from "../fixtures/openai-test-double.js";
import { type Stack, startChatmesh, startStack } from "../fixtures/processes.js";

const key = "sk-e2e-0123456789SECRET";
let double: OpenAiTestDouble;
let stack: Stack;
beforeAll(async () => {
  double = await startOpenAiTestDouble({ model: "llama-double" });
  // The whole chain as real processes; the model server is the test double (a paid API's stand-in).
  stack = await startStack({
    LLM_BACKEND: "openai",
    OPENAI_BASE_URL: double.baseUrl,
    OPENAI_API_KEY: key,
    LLM_MODEL: "llama-double",
    LLM_TIMEOUT_MS: "1500",
    QUOTA_COST_MODE: "tokens",
    QUOTA_LIMIT: "40",
    QUOTA_REPLY_RESERVE: "10",
  });
});
afterAll(async () => {
  await stack?.stopAll();
  await double?.close();
});

const sdk = () =>
  new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: "unused", maxRetries: 0 });
const ask = (user: string, text: string) => ({
  model: "llama-double",
  user,
  messages: [{ role: "user" as const, content: text }],
});
const quotaOf = async (user: string) =>
  (await (await fetch(`${stack.gatewayUrl}/quota?user_id=${user}`)).json()) as { used: number };
const thrown = (promise: Promise<unknown>) =>
  promise.then(
    () => {
      throw new Error("expected the call to fail");
    },
    (err: unknown) => err,
  );

describe("chatmesh on an OpenAI-compatible model server, used through the OpenAI SDK", () => {
  it("answers with the server's reply, model and usage, and charges the usage", async () => {
    const seen = double.requests.length;
    const completion = await sdk().chat.completions.create(ask("e1", "Hello   world"));
    expect(completion.model).toBe("llama-double");
    expect(completion.choices[0]?.message.content).toBe("Reply to: Hello world");
    // The test double counts words: 2 of prompt, 4 of reply.
    expect(completion.usage).toEqual({ prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 });
    expect((await quotaOf("e1")).used).toBe(6);
    // The model server saw the cleaned text and the key; never the user id.
    expect(double.requests[seen]).toMatchObject({
      authorization: `Bearer ${key}`,
      body: { model: "llama-double", messages: [{ role: "user", content: "Hello world" }] },
    });
    expect(double.requests[seen]?.body.user).toBeUndefined();
  });

  it("streams the server's reply and settles to its usage", async () => {
    const stream = await sdk().chat.completions.create({
      ...ask("e2", "streaming now please"),
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      usage = chunk.usage ?? usage;
    }
    expect(text).toBe("Reply to: streaming now please");
    expect(usage).toEqual({ prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 });
    expect((await quotaOf("e2")).used).toBe(8);
    const models = [];
    for await (const model of sdk().models.list()) models.push(model.id);
    expect(models).toEqual(["llama-double"]);
  });

  it("cuts a reply longer than LLM_MAX_REPLY_BYTES there, ending it as length, and keeps it in the history", async () => {
    const cap = 524_288;
    // A model server that ignores max_tokens: 3 MB of "€", more than the gateway reads
    // (under what the backend reads of one answer: 8 times the cap and 1 MiB).
    const chat = await fetch(`${stack.gatewayUrl}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "e5", text: "huge 3000000" }),
    });
    expect(chat.status).toBe(200);
    const { reply } = (await chat.json()) as { reply: string };
    // Whole characters: 3 bytes each, as many as fit.
    expect(reply).toBe("€".repeat(Math.floor(cap / 3)));
    const completion = await sdk().chat.completions.create(ask("e6", "huge 3000000"));
    expect(completion.choices[0]).toMatchObject({ finish_reason: "length" });
    expect(completion.choices[0]?.message.content).toBe(reply);
    const stream = await sdk().chat.completions.create({
      ...ask("e6", "huge 3000000"),
      stream: true,
    });
    let text = "";
    let finish: string | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect([text === reply, finish]).toEqual([true, "length"]);
    // The history stores the cut reply (it would refuse one over MAX_REQUEST_BYTES).
    const history = await fetch(`${stack.gatewayUrl}/history?user_id=e5`);
    const { items } = (await history.json()) as { items: { reply: string }[] };
    expect(items.map((item) => item.reply === reply)).toEqual([true]);
    expect(stack.procs.get("llm")?.output()).toContain("reply cut at LLM_MAX_REPLY_BYTES");
  });

  it("sends the conversation before the text to the model server; a banned term in it is refused", async () => {
    const seen = double.requests.length;
    const completion = await sdk().chat.completions.create({
      model: "llama-double",
      user: "e7",
      messages: [
        { role: "system", content: "Be  brief." },
        { role: "user", content: "I am Ada." },
        { role: "assistant", content: "Hi Ada." },
        { role: "user", content: "Who   am I?" },
      ],
      temperature: 0.3,
      stop: "END",
      seed: 5,
    });
    expect(completion.choices[0]?.message.content).toBe("Reply to: Who am I?");
    // The test double counts the words of every message: 2 + 3 + 2 + 3, and 5 of reply.
    expect(completion.usage).toEqual({ prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 });
    expect((await quotaOf("e7")).used).toBe(15);
    // The sampling parameters as asked; the context as it was sent, the text cleaned.
    expect(double.requests[seen]?.body).toMatchObject({ temperature: 0.3, stop: ["END"], seed: 5 });
    expect(double.requests.slice(seen).map((r) => r.body.messages)).toEqual([
      [
        { role: "system", content: "Be  brief." },
        { role: "user", content: "I am Ada." },
        { role: "assistant", content: "Hi Ada." },
        { role: "user", content: "Who am I?" },
      ],
    ]);
    const err = await thrown(
      sdk().chat.completions.create({
        model: "llama-double",
        user: "e7",
        messages: [
          { role: "system", content: "Always say FOO." },
          { role: "user", content: "hi" },
        ],
      }),
    );
    expect(err).toBeInstanceOf(BadRequestError);
    expect(err).toMatchObject({ status: 400, code: "content_filter" });
    expect(double.requests.length).toBe(seen + 1);
    expect((await quotaOf("e7")).used).toBe(15);
  });

  it("answers a prompt over the model's context 400 context_length_exceeded, unary and streamed, refunded", async () => {
    const unary = await thrown(sdk().chat.completions.create(ask("e8", "too long")));
    expect(unary).toBeInstanceOf(BadRequestError);
    expect(unary).toMatchObject({ status: 400, code: "context_length_exceeded" });
    const streamed = await thrown(
      sdk().chat.completions.create({ ...ask("e8", "too long vllm"), stream: true }),
    );
    expect(streamed).toMatchObject({ status: 400, code: "context_length_exceeded" });
    const chat = await fetch(`${stack.gatewayUrl}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "e8", text: "too long" }),
    });
    expect([chat.status, await chat.json()]).toEqual([400, { error: "text too long" }]);
    expect((await quotaOf("e8")).used).toBe(0);
  });

  it("passes response_format to the model server: JSON of a schema, unary and streamed", async () => {
    const seen = double.requests.length;
    const json_schema = {
      name: "answer",
      schema: { type: "object", properties: { reply: { type: "string" } }, required: ["reply"] },
      strict: true,
    };
    const completion = await sdk().chat.completions.create({
      ...ask("e9", "json please"),
      response_format: { type: "json_schema", json_schema },
    });
    expect(JSON.parse(completion.choices[0]?.message.content ?? "")).toEqual({
      reply: "Reply to: json please",
    });
    const stream = await sdk().chat.completions.create({
      ...ask("e9", "json please"),
      response_format: { type: "json_object" },
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
    expect(JSON.parse(text)).toEqual({ reply: "Reply to: json please" });
    expect(double.requests.slice(seen).map((r) => r.body.response_format)).toEqual([
      { type: "json_schema", json_schema },
      { type: "json_object" },
    ]);
  });

  it("refuses blocked text before the model server, and a spent quota with 429", async () => {
    const seen = double.requests.length;
    expect(await thrown(sdk().chat.completions.create(ask("e3", "has foo in it")))).toBeInstanceOf(
      BadRequestError,
    );
    expect(double.requests.length).toBe(seen);
    // 40 tokens a day; each chat of 1 word uses 1 + 3 = 4 and reserves 1 + 10.
    for (let i = 0; i < 7; i++) await sdk().chat.completions.create(ask("e3", "hi"));
    expect((await quotaOf("e3")).used).toBe(28);
    const err = await thrown(sdk().chat.completions.create(ask("e3", "a b c d e f g h i j k")));
    expect(err).toBeInstanceOf(RateLimitError);
    expect(err).toMatchObject({ code: "insufficient_quota" });
  });

  it("answers 500 when the model server fails or times out, gives the charge back, and logs no key", async () => {
    expect(await thrown(sdk().chat.completions.create(ask("e4", "status 500")))).toBeInstanceOf(
      InternalServerError,
    );
    const started = Date.now();
    expect(await thrown(sdk().chat.completions.create(ask("e4", "hang")))).toBeInstanceOf(
      InternalServerError,
    );
    expect(Date.now() - started).toBeLessThan(10_000);
    const stream = await sdk().chat.completions.create({ ...ask("e4", "stall"), stream: true });
    const broken = await thrown(
      (async () => {
        for await (const _ of stream) {
          // the first piece comes, then the server stalls past LLM_TIMEOUT_MS
        }
      })(),
    );
    expect(broken).toBeInstanceOf(APIError);
    expect((await quotaOf("e4")).used).toBe(0);
    // A request the model server refuses is its failure, not the caller's mistake: 500, as streamed.
    for (const status of [401, 400, 422]) {
      expect(
        await thrown(sdk().chat.completions.create(ask("e4", `status ${status}`))),
      ).toBeInstanceOf(InternalServerError);
    }
    const chat = await fetch(`${stack.gatewayUrl}/chat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "e4", text: "status 400" }),
    });
    expect([chat.status, await chat.json()]).toEqual([500, { error: "llm failed" }]);
    expect((await quotaOf("e4")).used).toBe(0);
    const llmLog = stack.procs.get("llm")?.output() ?? "";
    expect(llmLog).toContain("model server call failed");
    expect(llmLog).toContain('"status":401');
    expect(llmLog).not.toContain(key);
    expect(stack.procs.get("gateway")?.output()).not.toContain(key);
  });

  it("stops at start-up with one line naming a missing variable", async () => {
    const llm = startChatmesh(["llm"], {
      LLM_BACKEND: "openai",
      OPENAI_BASE_URL: "",
      LLM_MODEL: "x",
      LLM_PORT: "0",
    });
    expect(await llm.exited).toBe(1);
    expect(llm.output().trim()).toMatch(
      /^chatmesh llm: OPENAI_BASE_URL is required with LLM_BACKEND=openai: .+$/,
    );
  });
});
