import { Writable } from "node:stream";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PromptTooLongSchema } from "../../../gen/chat/v1/errors_pb.js";
import { LLMService, ResponseFormatType, Role } from "../../../gen/chat/v1/llm_pb.js";
import { createLlmService } from "../../../src/services/llm/llm-service.js";
import { createOpenAiBackend } from "../../../src/services/llm/openai-backend.js";
import { redactSecrets } from "../../../src/services/llm/openai-errors.js";
import { type OpenAiTestDouble, startOpenAiTestDouble } from "../../fixtures/openai-test-double.js";
import { freePort } from "../../fixtures/processes.js";
import { codeOf } from "../../fixtures/rpc.js";

const key = "sk-test-0123456789abcdefSECRET";
let double: OpenAiTestDouble;
beforeAll(async () => {
  double = await startOpenAiTestDouble();
});
afterAll(() => double.close());

/** The LLM service on the openai backend, pointed at the test double; logs kept in memory. */
function llm(
  options: {
    apiKey?: string;
    timeoutMs?: number;
    baseUrl?: string;
    model?: string;
    maxTokens?: number;
    maxAnswerBytes?: number;
  } = {},
) {
  const lines: string[] = [];
  const logger = pino(
    { level: "info" },
    new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk));
        done();
      },
    }),
  );
  const backend = createOpenAiBackend({
    baseUrl: options.baseUrl ?? double.baseUrl,
    apiKey: options.apiKey ?? key,
    model: options.model ?? "test-double-model",
    timeoutMs: options.timeoutMs ?? 10_000,
    ...(options.maxAnswerBytes !== undefined && { maxAnswerBytes: options.maxAnswerBytes }),
    logger,
  });
  const client = createClient(
    LLMService,
    createRouterTransport((router) =>
      router.service(
        LLMService,
        createLlmService({ backend, logger, maxTokens: options.maxTokens ?? 256 }),
      ),
    ),
  );
  return { client, logs: () => lines.join("") };
}

const failure = (promise: Promise<unknown>) =>
  promise.then(
    () => {
      throw new Error("expected the call to fail");
    },
    (err: unknown) => ConnectError.from(err),
  );

async function drain(stream: AsyncIterable<{ delta: string }>): Promise<string> {
  let text = "";
  for await (const { delta } of stream) text += delta;
  return text;
}

describe("the openai backend against an OpenAI-compatible test double", () => {
  it("answers a text with the model's reply, usage, model and finish reason", async () => {
    const seen = double.requests.length;
    const res = await llm().client.generate({ text: "Hello world", userId: "u1" });
    expect(res).toMatchObject({
      reply: "Reply to: Hello world",
      model: "test-double-model",
      finishReason: "stop",
      usage: { promptTokens: 2, completionTokens: 4, totalTokens: 6 },
    });
    const [request] = double.requests.slice(seen);
    expect(request?.authorization).toBe(`Bearer ${key}`);
    expect(request?.body).toEqual({
      model: "test-double-model",
      messages: [{ role: "user", content: "Hello world" }],
      max_tokens: 256,
    });
  });

  it("sends the conversation before the text (its context) as the messages before it", async () => {
    const { client } = llm();
    const context = [
      { role: Role.SYSTEM, content: "Answer in French." },
      { role: Role.USER, content: "My name is Ada." },
      { role: Role.ASSISTANT, content: "Bonjour Ada." },
      { role: Role.DEVELOPER, content: "Be brief." },
    ];
    const messages = [
      { role: "system", content: "Answer in French." },
      { role: "user", content: "My name is Ada." },
      { role: "assistant", content: "Bonjour Ada." },
      // As system: vLLM's and Ollama's templates refuse developer, OpenAI takes both alike.
      { role: "system", content: "Be brief." },
      { role: "user", content: "What is my name?" },
    ];
    const seen = double.requests.length;
    const res = await client.generate({ text: "What is my name?", context });
    expect(res.reply).toBe("Reply to: What is my name?");
    // The double counts the words of every message as the prompt.
    expect(res.usage?.promptTokens).toBe(15);
    let streamed = "";
    for await (const m of client.generateStream({ text: "What is my name?", context })) {
      streamed += m.delta;
    }
    expect(streamed).toBe("Reply to: What is my name?");
    expect(double.requests.slice(seen).map((r) => r.body.messages)).toEqual([messages, messages]);
  });

  it("refuses a context message without a role as INVALID_ARGUMENT, calling no model", async () => {
    const { client } = llm();
    const seen = double.requests.length;
    const err = await failure(
      client.generate({ text: "hi", context: [{ role: Role.UNSPECIFIED, content: "x" }] }),
    );
    expect([err.code, err.rawMessage]).toEqual([
      Code.InvalidArgument,
      "context[0].role must be set",
    ]);
    const streamed = await failure(
      drain(client.generateStream({ text: "hi", context: [{ role: 9 as Role, content: "x" }] })),
    );
    expect([streamed.code, streamed.rawMessage]).toEqual([
      Code.InvalidArgument,
      "context[0].role must be set",
    ]);
    expect(double.requests.length).toBe(seen);
  });

  it("refuses a prompt over the model's context as INVALID_ARGUMENT with a PromptTooLong detail", async () => {
    const { client } = llm();
    for (const text of ["too long", "too long vllm"]) {
      const unary = await failure(client.generate({ text }));
      const streamed = await failure(drain(client.generateStream({ text })));
      for (const err of [unary, streamed]) {
        expect([err.code, err.findDetails(PromptTooLongSchema).length], text).toEqual([
          Code.InvalidArgument,
          1,
        ]);
      }
    }
    // The prompt and the reply's room (max_tokens) together over the context (vLLM's words).
    const overflow = await failure(client.generate({ text: "context 2000" }));
    expect([overflow.code, overflow.findDetails(PromptTooLongSchema).length]).toEqual([
      Code.InvalidArgument,
      1,
    ]);
    // Any other 400 stays the model server's to fix.
    const other = await failure(client.generate({ text: "status 400" }));
    expect([other.code, other.findDetails(PromptTooLongSchema).length]).toEqual([
      Code.FailedPrecondition,
      0,
    ]);
  });

  it("fails a call whose max_tokens alone passes the model's context as the server's to fix, not the prompt's", async () => {
    // LLM_MAX_TOKENS over the model server's context (vLLM's --max-model-len):
    // no prompt, however short, fits; shortening it is no help.
    const { client } = llm({ maxTokens: 4096 });
    for (const err of [
      await failure(client.generate({ text: "context 5" })),
      await failure(drain(client.generateStream({ text: "context 5" }))),
    ]) {
      expect([err.code, err.findDetails(PromptTooLongSchema).length]).toEqual([
        Code.FailedPrecondition,
        0,
      ]);
    }
  });

  it("sends no Authorization header without a key (local servers)", async () => {
    const seen = double.requests.length;
    await llm({ apiKey: "" }).client.generate({ text: "hi" });
    expect(double.requests[seen]?.authorization).toBeUndefined();
  });

  it("passes a smaller max_tokens on, and tells when the reply was cut", async () => {
    const seen = double.requests.length;
    const res = await llm().client.generate({ text: "a b c", maxTokens: 2 });
    expect(double.requests[seen]?.body.max_tokens).toBe(2);
    expect(res.finishReason).toBe("length");
  });

  it("streams the reply in pieces, with the model first and the usage last", async () => {
    const seen = double.requests.length;
    const messages = [];
    for await (const m of llm().client.generateStream({ text: "Hello streaming world" })) {
      messages.push(m);
    }
    expect(messages.length).toBeGreaterThan(3);
    expect(messages.map((m) => m.delta).join("")).toBe("Reply to: Hello streaming world");
    expect(messages[0]?.model).toBe("test-double-model");
    expect(messages.at(-1)).toMatchObject({
      delta: "",
      finishReason: "stop",
      usage: { promptTokens: 3, completionTokens: 5, totalTokens: 8 },
    });
    expect(double.requests[seen]?.body).toMatchObject({
      stream: true,
      stream_options: { include_usage: true },
    });
  });

  it("ends a call that outlives LLM_TIMEOUT_MS with DEADLINE_EXCEEDED, and aborts it upstream", async () => {
    const gone = double.clientsGone();
    const { client } = llm({ timeoutMs: 300 });
    const started = Date.now();
    const err = await failure(client.generate({ text: "hang" }));
    expect(err.code).toBe(Code.DeadlineExceeded);
    expect(err.rawMessage).toMatch(/LLM_TIMEOUT_MS \(300 ms\)/);
    expect(Date.now() - started).toBeLessThan(5_000);
    await expect.poll(() => double.clientsGone()).toBeGreaterThan(gone);
  });

  it("ends a stream that stalls past LLM_TIMEOUT_MS with DEADLINE_EXCEEDED, not as a whole reply", async () => {
    const gone = double.clientsGone();
    const { client } = llm({ timeoutMs: 400 });
    const err = await failure(drain(client.generateStream({ text: "stall" })));
    expect(err.code).toBe(Code.DeadlineExceeded);
    await expect.poll(() => double.clientsGone()).toBeGreaterThan(gone);
  });

  it("stops a stream at the caller's deadline, upstream too", async () => {
    const gone = double.clientsGone();
    const { client } = llm({ timeoutMs: 60_000 });
    const err = await failure(drain(client.generateStream({ text: "stall" }, { timeoutMs: 300 })));
    expect(err.code).toBe(Code.DeadlineExceeded);
    await expect.poll(() => double.clientsGone()).toBeGreaterThan(gone);
  });

  it("stops at the caller's deadline when it comes before LLM_TIMEOUT_MS", async () => {
    const gone = double.clientsGone();
    const { client } = llm({ timeoutMs: 60_000 });
    const started = Date.now();
    const err = await failure(client.generate({ text: "hang" }, { timeoutMs: 200 }));
    expect(err.code).toBe(Code.DeadlineExceeded);
    expect(Date.now() - started).toBeLessThan(5_000);
    await expect.poll(() => double.clientsGone()).toBeGreaterThan(gone);
  });

  it.each([
    [500, Code.Unavailable],
    [503, Code.Unavailable],
    [429, Code.Unavailable],
    [401, Code.FailedPrecondition],
    [403, Code.FailedPrecondition],
    [404, Code.FailedPrecondition],
    [400, Code.FailedPrecondition],
    [422, Code.FailedPrecondition],
  ])("maps an upstream %i to %s, once (no SDK retries)", async (status, code) => {
    const seen = double.requests.length;
    const err = await failure(llm().client.generate({ text: `status ${status}` }));
    expect(err.code).toBe(code);
    expect(double.requests.length - seen).toBe(1);
  });

  it("keeps max_tokens when a server refuses its value, not its name", async () => {
    const { client } = llm({ maxTokens: 10_000 });
    const seen = double.requests.length;
    expect(await codeOf(client.generate({ text: "big", maxTokens: 5_000 }))).toBe(
      "FailedPrecondition",
    );
    await client.generate({ text: "small", maxTokens: 5 });
    expect(double.requests.slice(seen).map((r) => r.body.max_tokens)).toEqual([5_000, 5]);
  });

  it("sends max_completion_tokens to a model that refuses max_tokens (OpenAI's o-series, gpt-5)", async () => {
    const { client, logs } = llm({ model: "o-double-reasoning" });
    const seen = double.requests.length;
    expect((await client.generate({ text: "first", maxTokens: 7 })).reply).toBe("Reply to: first");
    // Refused once, then asked again with the other name; from then on only that one.
    expect((await client.generate({ text: "second" })).reply).toBe("Reply to: second");
    const pieces: string[] = [];
    for await (const piece of client.generateStream({ text: "third" })) pieces.push(piece.delta);
    expect(pieces.join("")).toBe("Reply to: third");
    const sent = double.requests
      .slice(seen)
      .map((r) => [r.body.max_tokens, r.body.max_completion_tokens]);
    expect(sent).toEqual([
      [7, undefined],
      [undefined, 7],
      [undefined, 256],
      [undefined, 256],
    ]);
    expect(logs()).toContain("max_completion_tokens");
  });

  it("passes the sampling parameters asked for on, and none that was not", async () => {
    const { client } = llm();
    const seen = double.requests.length;
    const sampling = {
      temperature: 0,
      topP: 0.5,
      stop: ["\n\n", "END"],
      seed: 42n,
      presencePenalty: -1.5,
      frequencyPenalty: 2,
      reasoningEffort: "low",
    };
    await client.generate({ text: "hi", sampling });
    await drain(client.generateStream({ text: "hi", sampling: { temperature: 1.25 } }));
    await client.generate({ text: "hi" });
    const [unary, streamed, none] = double.requests.slice(seen).map((r) => r.body);
    expect(unary).toMatchObject({
      temperature: 0,
      top_p: 0.5,
      stop: ["\n\n", "END"],
      seed: 42,
      presence_penalty: -1.5,
      frequency_penalty: 2,
      reasoning_effort: "low",
    });
    expect(streamed).toMatchObject({ temperature: 1.25 });
    expect(Object.keys(streamed ?? {}).sort()).toEqual([
      "max_tokens",
      "messages",
      "model",
      "stream",
      "stream_options",
      "temperature",
    ]);
    expect(Object.keys(none ?? {}).sort()).toEqual(["max_tokens", "messages", "model"]);
  });

  it("passes response_format on: JSON, of a schema or not", async () => {
    const { client } = llm();
    const seen = double.requests.length;
    const schema = { name: "answer", schema: { type: "object" }, strict: true };
    const json = await client.generate({
      text: "hi",
      responseFormat: { type: ResponseFormatType.JSON_OBJECT },
    });
    expect(JSON.parse(json.reply)).toEqual({ reply: "Reply to: hi" });
    const streamed = await drain(
      client.generateStream({
        text: "hi",
        responseFormat: {
          type: ResponseFormatType.JSON_SCHEMA,
          jsonSchema: JSON.stringify(schema),
        },
      }),
    );
    expect(JSON.parse(streamed)).toEqual({ reply: "Reply to: hi" });
    expect(double.requests.slice(seen).map((r) => r.body.response_format)).toEqual([
      { type: "json_object" },
      { type: "json_schema", json_schema: schema },
    ]);
    const bad = await failure(
      client.generate({
        text: "hi",
        responseFormat: { type: ResponseFormatType.JSON_SCHEMA, jsonSchema: "[1]" },
      }),
    );
    expect([bad.code, bad.rawMessage]).toEqual([
      Code.InvalidArgument,
      "response_format.json_schema must be a JSON object",
    ]);
  });

  it("leaves out a sampling parameter the model refuses, from then on (OpenAI's reasoning models)", async () => {
    const { client, logs } = llm({ model: "o-double-reasoning" });
    const seen = double.requests.length;
    const sampling = { temperature: 0.2, topP: 1, stop: ["END"] };
    expect((await client.generate({ text: "first", sampling })).reply).toBe("Reply to: first");
    expect(await drain(client.generateStream({ text: "second", sampling }))).toBe(
      "Reply to: second",
    );
    const sent = double.requests
      .slice(seen)
      .map(({ body: { temperature, top_p, stop } }) => ({ temperature, top_p, stop }));
    // Refused: max_tokens, then temperature, then stop; top_p 1 is taken.
    expect(sent).toEqual([
      { temperature: 0.2, top_p: 1, stop: ["END"] },
      { temperature: 0.2, top_p: 1, stop: ["END"] },
      { temperature: undefined, top_p: 1, stop: ["END"] },
      { temperature: undefined, top_p: 1, stop: undefined },
      { temperature: undefined, top_p: 1, stop: undefined },
    ]);
    expect(logs()).toContain("the model server refuses temperature: not sending it");
    expect(logs()).toContain("the model server refuses stop: not sending it");
  });

  it("leaves out a value the model refuses, not the parameter's other values", async () => {
    const { client } = llm({ model: "o-double-reasoning" });
    const seen = double.requests.length;
    const answer = async (reasoningEffort: string) =>
      (await client.generate({ text: reasoningEffort, sampling: { reasoningEffort } })).reply;
    expect(await answer("minimal")).toBe("Reply to: minimal");
    expect(await answer("high")).toBe("Reply to: high");
    expect(await answer("minimal")).toBe("Reply to: minimal");
    const sent = double.requests
      .slice(seen)
      .filter(({ body }) => body.max_completion_tokens !== undefined)
      .map(({ body }) => body.reasoning_effort);
    // One user's value the model refuses leaves the others' as they are.
    expect(sent).toEqual(["minimal", undefined, "high", undefined]);
  });

  it("streams from a server that refuses stream_options, asking without it from then on", async () => {
    const { client, logs } = llm({ model: "old-double-no-stream-options" });
    const seen = double.requests.length;
    for (const text of ["first", "second"]) {
      const pieces = [];
      for await (const piece of client.generateStream({ text })) pieces.push(piece);
      expect(pieces.map((p) => p.delta).join("")).toBe(`Reply to: ${text}`);
      // No usage from such a server: the gateway counts the tokens itself.
      expect(pieces.at(-1)?.finishReason).toBe("stop");
      expect(pieces.at(-1)?.usage).toBeUndefined();
    }
    const sent = double.requests.slice(seen).map((r) => r.body.stream_options);
    expect(sent).toEqual([{ include_usage: true }, undefined, undefined]);
    expect(logs()).toContain("stream_options");
  });

  it("keeps asking for stream_options when a refusal of another parameter quotes the words (a schema's name)", async () => {
    const { client, logs } = llm();
    const seen = double.requests.length;
    // OpenAI's words for a schema it refuses quote its name (and its properties' names).
    const refused = await failure(
      drain(
        client.generateStream({
          text: "hi",
          responseFormat: {
            type: ResponseFormatType.JSON_SCHEMA,
            jsonSchema: JSON.stringify({
              name: "stream_options",
              strict: true,
              schema: { type: "array" },
            }),
          },
        }),
      ),
    );
    expect(refused.code).toBe(Code.InvalidArgument);
    const pieces = [];
    for await (const piece of client.generateStream({ text: "next" })) pieces.push(piece);
    expect(pieces.at(-1)?.usage).toBeDefined();
    // Asked once (not again without stream_options), and the next stream as ever.
    expect(double.requests.slice(seen).map((r) => r.body.stream_options)).toEqual([
      { include_usage: true },
      { include_usage: true },
    ]);
    expect(logs()).not.toContain("refuses stream_options");
  });

  it("maps a refused stream the same way", async () => {
    const err = await failure(drain(llm().client.generateStream({ text: "status 500" })));
    expect(err.code).toBe(Code.Unavailable);
  });

  it.each([
    ["an error event", "break"],
    ["a lost connection", "sever"],
    ["an end without finish_reason (a reply cut off)", "cut"],
  ])("maps %s in the middle of a stream to UNAVAILABLE", async (_what, text) => {
    const err = await failure(drain(llm().client.generateStream({ text })));
    expect([Code[err.code], err.rawMessage]).toEqual([
      "Unavailable",
      expect.stringMatching(/^model server /),
    ]);
  });

  it("maps a dropped connection and an unreachable server to UNAVAILABLE", async () => {
    expect((await failure(llm().client.generate({ text: "drop" }))).code).toBe(Code.Unavailable);
    const closed = `http://127.0.0.1:${await freePort()}/v1`;
    expect((await failure(llm({ baseUrl: closed }).client.generate({ text: "hi" }))).code).toBe(
      Code.Unavailable,
    );
  });

  it("takes a usage chunk without choices, as some servers send it", async () => {
    const pieces = [];
    for await (const piece of llm().client.generateStream({ text: "bare usage" })) {
      pieces.push(piece);
    }
    expect(pieces.map((p) => p.delta).join("")).toBe("Reply to: bare usage");
    expect(pieces.at(-1)).toMatchObject({ finishReason: "stop", usage: { totalTokens: 6 } });
  });

  it("adds up a usage without total_tokens, and takes an empty one as none, not as 0 tokens", async () => {
    const { client } = llm();
    // "partial usage": 2 words of prompt, 4 of reply.
    const whole = { promptTokens: 2, completionTokens: 4, totalTokens: 6 };
    expect((await client.generate({ text: "partial usage" })).usage).toMatchObject(whole);
    const streamed = [];
    for await (const m of client.generateStream({ text: "partial usage" })) streamed.push(m);
    expect(streamed.at(-1)?.usage).toMatchObject(whole);
    // None reported: the gateway counts the tokens itself rather than charging nothing.
    expect((await client.generate({ text: "empty usage" })).usage).toBeUndefined();
    const bare = [];
    for await (const m of client.generateStream({ text: "empty usage" })) bare.push(m);
    expect(bare.map((m) => m.delta).join("")).toBe("Reply to: empty usage");
    expect(bare.every((m) => m.usage === undefined)).toBe(true);
  });

  it("reads no answer past its limit, nor a stream's event: RESOURCE_EXHAUSTED", async () => {
    // The double streams 64 Ki "€" an event: ~197 KB a line, 450 KB in all here.
    const { client } = llm({ maxAnswerBytes: 300_000 });
    const whole = await failure(client.generate({ text: "huge 450000" }));
    expect([whole.code, whole.rawMessage]).toEqual([
      Code.ResourceExhausted,
      "model server answered over 300000 bytes",
    ]);
    // Its events are each under the limit: the stream is read to its end.
    expect(await drain(client.generateStream({ text: "huge 450000" }))).toBe("€".repeat(150_000));
    const { client: strict } = llm({ maxAnswerBytes: 100_000 });
    const event = await failure(drain(strict.generateStream({ text: "huge 450000" })));
    expect([event.code, event.rawMessage]).toEqual([
      Code.ResourceExhausted,
      "model server sent an event over 100000 bytes",
    ]);
    // An event is what the SDK holds whole until its blank line, however short its lines.
    const lines = await failure(drain(strict.generateStream({ text: "lines 450000" })));
    expect([lines.code, lines.rawMessage]).toEqual([
      Code.ResourceExhausted,
      "model server sent an event over 100000 bytes",
    ]);
    // Under the limit, an answer is read as ever.
    expect((await client.generate({ text: "huge 60000" })).reply).toBe("€".repeat(20_000));
  });

  it("fails an answer with no choice as UNAVAILABLE, and gives a refusal as the reply", async () => {
    const { client } = llm();
    const empty = await failure(client.generate({ text: "no choice" }));
    expect([empty.code, empty.rawMessage]).toEqual([
      Code.Unavailable,
      "model server answered no choice",
    ]);
    expect((await client.generate({ text: "refuse" })).reply).toBe("I cannot help with that.");
  });

  it.each([
    ["error", "OpenRouter's provider failed"],
    ["abort", "vLLM aborted the request"],
  ])(
    "fails a reply that ends with finish_reason %s (%s) as UNAVAILABLE, not as a whole reply",
    async (reason) => {
      const { client } = llm();
      const unary = await failure(client.generate({ text: `finish ${reason}` }));
      expect([Code[unary.code], unary.rawMessage]).toEqual([
        "Unavailable",
        `model server ended the reply with finish_reason ${reason}`,
      ]);
      const streamed = await failure(drain(client.generateStream({ text: `finish ${reason}` })));
      expect([Code[streamed.code], streamed.rawMessage]).toEqual([
        "Unavailable",
        `model server ended the reply with finish_reason ${reason}`,
      ]);
    },
  );

  it("streams a refusal as the reply, as it answers one", async () => {
    const { client } = llm();
    const pieces: string[] = [];
    for await (const res of client.generateStream({ text: "refuse" })) {
      if (res.delta !== "") pieces.push(res.delta);
    }
    expect(pieces).toEqual(["I cannot ", "help with that."]);
  });

  it("fails an answer or a stream event that is not JSON as UNAVAILABLE", async () => {
    const { client } = llm();
    const unary = await failure(client.generate({ text: "bad json" }));
    expect([unary.code, unary.rawMessage]).toEqual([
      Code.Unavailable,
      "model server answered what is not JSON",
    ]);
    const streamed = await failure(
      (async () => {
        for await (const _ of client.generateStream({ text: "bad json" })) {
          // read to the end
        }
      })(),
    );
    expect([streamed.code, streamed.rawMessage]).toEqual([
      Code.Unavailable,
      "model server answered what is not JSON",
    ]);
  });

  it("keeps a streamed reply whole when the connection breaks after its finish_reason, not before", async () => {
    const { client } = llm();
    let streamed = "";
    let finishReason = "";
    for await (const res of client.generateStream({ text: "sever after" })) {
      streamed += res.delta;
      finishReason ||= res.finishReason;
    }
    expect([streamed, finishReason]).toEqual(["Reply to: sever after", "stop"]);
    const cut = await failure(
      (async () => {
        for await (const _ of client.generateStream({ text: "sever" })) {
          // read to the end
        }
      })(),
    );
    expect(cut.code).toBe(Code.Unavailable);
  });

  it("ends a stream at its [DONE] event when the server leaves the response open after it", async () => {
    const gone = double.clientsGone();
    const { client } = llm({ timeoutMs: 5_000 });
    const started = Date.now();
    const got = [];
    for await (const res of client.generateStream({ text: "linger" })) got.push(res);
    expect(Date.now() - started).toBeLessThan(2_500);
    expect(got.map((m) => m.delta).join("")).toBe("Reply to: linger");
    expect(got.at(-1)?.finishReason).toBe("stop");
    expect(got.at(-1)?.usage?.totalTokens).toBe(4);
    // The response is closed from this side, not left to the server.
    await expect.poll(() => double.clientsGone()).toBeGreaterThan(gone);
  });

  it("takes a content of parts (Mistral's reasoning models) by its text, unary and streamed", async () => {
    const { client } = llm();
    expect((await client.generate({ text: "parts" })).reply).toBe("Reply to: parts");
    let streamed = "";
    for await (const res of client.generateStream({ text: "parts" })) streamed += res.delta;
    expect(streamed).toBe("Reply to: parts");
  });

  it("logs the upstream failure without the key, and tells the caller nothing of it", async () => {
    const { client, logs } = llm();
    const err = await failure(client.generate({ text: "status 401" }));
    expect(err.rawMessage).not.toContain(key);
    expect(logs()).toContain("model server call failed");
    expect(logs()).toContain('"status":401');
    expect(logs()).toContain("Incorrect API key provided");
    expect(logs()).not.toContain(key);
    expect(logs()).not.toContain("0123456789abcdef");
  });
  it("logs a model server's error page cut short, not whole for every failed call", async () => {
    const { client, logs } = llm();
    const err = await failure(client.generate({ text: "page 502 3000000" }));
    expect(err.code).toBe(Code.Unavailable);
    expect(logs()).toContain('"status":502');
    expect(logs()).toContain("<html><body>xxx");
    expect(logs().length).toBeLessThan(5_000);
  });

  it("logs why a model server could not be reached", async () => {
    const closed = `http://127.0.0.1:${await freePort()}/v1`;
    const { client, logs } = llm({ baseUrl: closed });
    expect((await failure(client.generate({ text: "hi" }))).code).toBe(Code.Unavailable);
    expect(logs()).toContain("ECONNREFUSED");
  });
});

describe("redactSecrets", () => {
  it.each([
    ["key sk-abc123XYZ_-def here", "key sk-[redacted] here"],
    ["Authorization: Bearer abc.def", "Authorization: Bearer [redacted]"],
    ['{"api_key":"s3cret"}', '{"api_key":"[redacted]"}'],
    ["my-own-key-value leaked", "[redacted] leaked"],
    ["a URL: http://alice:pw@host/v1 refused", "a URL: http://[redacted]@host/v1 refused"],
  ])("removes secrets from %j", (text, expected) => {
    expect(redactSecrets(text, ["my-own-key-value"])).toBe(expected);
  });
});
