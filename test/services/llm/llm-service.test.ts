import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { LLMService } from "../../../gen/chat/v1/llm_pb.js";
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
