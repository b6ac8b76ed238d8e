import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { LLMService } from "../../../gen/chat/v1/llm_pb.js";
import type { LlmBackend, LlmRequest } from "../../../src/services/llm/backend.js";
import { createEchoBackend } from "../../../src/services/llm/echo-backend.js";
import { createLlmService } from "../../../src/services/llm/llm-service.js";

const clientWith = (delayMs = 0) =>
  createClient(
    LLMService,
    createRouterTransport((router) =>
      router.service(LLMService, createLlmService({ backend: createEchoBackend({ delayMs }) })),
    ),
  );

describe("LLMService with the echo backend", () => {
  it("echoes the text the seed's way", async () => {
    expect((await clientWith().generate({ text: "这是一条最小链路测试" })).reply).toBe(
      "Echo: 这是一条最小链路测试",
    );
  });

  it("refuses empty text", async () => {
    await expect(clientWith().generate({ text: "" })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
  });

  it("stops a slow reply at the caller's deadline", async () => {
    const started = Date.now();
    const err = await clientWith(5_000)
      .generate({ text: "slow" }, { timeoutMs: 100 })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.DeadlineExceeded);
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});

describe("LLMService.GenerateStream with the echo backend", () => {
  it("streams the same reply as Generate, in several pieces", async () => {
    const client = clientWith();
    const deltas: string[] = [];
    for await (const { delta } of client.generateStream({ text: "Hello world from Go!" })) {
      deltas.push(delta);
    }
    expect(deltas.length).toBeGreaterThan(2);
    expect(deltas.join("")).toBe((await client.generate({ text: "Hello world from Go!" })).reply);
  });

  it("refuses empty text", async () => {
    const stream = clientWith().generateStream({ text: "" });
    await expect(stream[Symbol.asyncIterator]().next()).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
  });
});

/** A test double of a model that counts tokens: records what it was asked. */
function countingBackend() {
  const asked: LlmRequest[] = [];
  const backend: LlmBackend = {
    name: "counting (test double)",
    model: "counter-1",
    async generate(request) {
      asked.push(request);
      return {
        reply: "a b",
        usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 },
        finishReason: "length",
      };
    },
    async *stream(request) {
      asked.push(request);
      yield "a ";
      yield "b";
      yield { usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 } };
    },
  };
  return { backend, asked };
}

describe("LLMService with a backend that counts tokens", () => {
  const clientOf = (backend: LlmBackend, maxTokens?: number) =>
    createClient(
      LLMService,
      createRouterTransport((router) =>
        router.service(
          LLMService,
          createLlmService({ backend, ...(maxTokens !== undefined && { maxTokens }) }),
        ),
      ),
    );

  it("returns the usage, the model and why the reply ended", async () => {
    const res = await clientOf(countingBackend().backend).generate({ text: "hi" });
    expect(res).toMatchObject({
      reply: "a b",
      model: "counter-1",
      finishReason: "length",
      usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 },
    });
  });

  it("streams the model on the first message and the usage on the last", async () => {
    const messages = [];
    for await (const m of clientOf(countingBackend().backend).generateStream({ text: "hi" })) {
      messages.push({ delta: m.delta, model: m.model, usage: m.usage?.totalTokens });
    }
    expect(messages).toEqual([
      { delta: "a ", model: "counter-1", usage: undefined },
      { delta: "b", model: "", usage: undefined },
      { delta: "", model: "", usage: 5 },
    ]);
  });

  it("caps the reply at LLM_MAX_TOKENS; a request may ask for less", async () => {
    const { backend, asked } = countingBackend();
    const client = clientOf(backend, 100);
    await client.generate({ text: "hi" });
    await client.generate({ text: "hi", maxTokens: 10 });
    await client.generate({ text: "hi", maxTokens: 5_000 });
    for await (const _ of client.generateStream({ text: "hi", maxTokens: 7 })) {
      // drained
    }
    expect(asked.map((r) => r.maxTokens)).toEqual([100, 10, 100, 7]);
    await expect(client.generate({ text: "hi", maxTokens: -1 })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
  });

  it("lists its one model: LLM_MODEL, or echo", async () => {
    expect((await clientOf(countingBackend().backend).listModels({})).models).toMatchObject([
      { id: "counter-1" },
    ]);
    expect((await clientWith().listModels({})).models).toMatchObject([{ id: "echo" }]);
  });
});

describe("LLMService with a reply longer than LLM_MAX_REPLY_BYTES", () => {
  /** A test double of a model that ignores max_tokens: "€" (3 bytes) without end, 1,000 a piece. */
  const endless = () => {
    const state = { pieces: 0, stopped: false };
    const backend: LlmBackend = {
      name: "endless (test double)",
      async generate() {
        return { reply: "€".repeat(5_000), finishReason: "stop" };
      },
      async *stream() {
        try {
          for (;;) {
            state.pieces++;
            yield "€".repeat(1_000);
          }
        } finally {
          state.stopped = true;
        }
      },
    };
    const client = createClient(
      LLMService,
      createRouterTransport((router) =>
        router.service(LLMService, createLlmService({ backend, maxReplyBytes: 4_000 })),
      ),
    );
    return { client, state };
  };

  it("cuts it at a character boundary and ends it as length", async () => {
    const res = await endless().client.generate({ text: "hi" });
    expect([res.reply, res.finishReason]).toEqual(["€".repeat(1_333), "length"]);
  });

  it("ends the stream there as length, and stops the model", async () => {
    const { client, state } = endless();
    const messages = [];
    for await (const m of client.generateStream({ text: "hi" })) {
      messages.push({ chars: m.delta.length, finishReason: m.finishReason, model: m.model });
    }
    expect(messages).toEqual([
      { chars: 1_000, finishReason: "", model: "endless (test double)" },
      { chars: 333, finishReason: "", model: "" },
      { chars: 0, finishReason: "length", model: "" },
    ]);
    expect(state).toEqual({ pieces: 2, stopped: true });
  });
});
