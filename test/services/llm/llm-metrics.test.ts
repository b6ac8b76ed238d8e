import type { AddressInfo } from "node:net";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { LLMService } from "../../../gen/chat/v1/llm_pb.js";
import { loadLlmConfig } from "../../../src/lib/config.js";
import type { LlmBackend } from "../../../src/services/llm/backend.js";
import { createLlmMetrics } from "../../../src/services/llm/llm-metrics.js";
import { createLlmService } from "../../../src/services/llm/llm-service.js";
import { buildLlm } from "../../../src/services/llm/main.js";

const usage = { promptTokens: 7, completionTokens: 3, totalTokens: 10 };

/** A test double of a model server that counts tokens, first piece after `delayMs`, ending as `finishReason`. */
function countingModel(delayMs: number, finishReason: string): LlmBackend {
  return {
    name: "counting (test double)",
    model: "counter-1",
    async generate() {
      return { reply: "a b", usage, finishReason };
    },
    async *stream() {
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      yield "a ";
      yield "b";
      yield { usage, finishReason };
    },
  };
}

function serviceWith(backend: LlmBackend, maxReplyBytes?: number) {
  const registry = new Registry();
  const client = createClient(
    LLMService,
    createRouterTransport((router) =>
      router.service(
        LLMService,
        createLlmService({
          backend,
          registry,
          ...(maxReplyBytes !== undefined && { maxReplyBytes }),
        }),
      ),
    ),
  );
  /** The value of a sample line `name{labels}` of the registry's text, or undefined. */
  const sample = async (line: string) => {
    const text = await registry.metrics();
    const found = text.split("\n").find((l) => l.startsWith(`${line} `));
    return found === undefined ? undefined : Number(found.slice(line.length + 1));
  };
  return { client, sample };
}

const drain = async (stream: AsyncIterable<unknown>) => {
  for await (const _ of stream) {
    // read to the end
  }
};

describe("the LLM service's metrics", () => {
  it("counts the tokens the model server counted, and why each reply ended", async () => {
    const { client, sample } = serviceWith(countingModel(0, "stop"));
    await client.generate({ text: "hi" });
    await drain(client.generateStream({ text: "hi" }));
    expect(await sample('chatmesh_llm_tokens_total{model="counter-1",kind="prompt"}')).toBe(14);
    expect(await sample('chatmesh_llm_tokens_total{model="counter-1",kind="completion"}')).toBe(6);
    expect(await sample('chatmesh_llm_replies_total{model="counter-1",finish_reason="stop"}')).toBe(
      2,
    );
  });

  it("times a stream's first piece", async () => {
    const { client, sample } = serviceWith(countingModel(120, "stop"));
    await drain(client.generateStream({ text: "hi" }));
    const name = "chatmesh_llm_time_to_first_token_seconds";
    expect(await sample(`${name}_count{model="counter-1"}`)).toBe(1);
    expect(await sample(`${name}_sum{model="counter-1"}`)).toBeGreaterThanOrEqual(0.1);
    expect(await sample(`${name}_bucket{le="0.1",model="counter-1"}`)).toBe(0);
    expect(await sample(`${name}_bucket{le="0.25",model="counter-1"}`)).toBe(1);
  });

  it("tells a first piece after 30 s from one after 2 minutes, up to LLM_TIMEOUT_MS's default and past it", async () => {
    const registry = new Registry();
    const metrics = createLlmMetrics(registry, "slow-1");
    metrics.firstPiece(45);
    metrics.firstPiece(150);
    const text = await registry.metrics();
    const bucket = (le: string) =>
      Number(
        text
          .split("\n")
          .find((l) =>
            l.startsWith(
              `chatmesh_llm_time_to_first_token_seconds_bucket{le="${le}",model="slow-1"} `,
            ),
          )
          ?.split(" ")[1],
      );
    expect([bucket("30"), bucket("60"), bucket("120"), bucket("300")]).toEqual([0, 1, 1, 2]);
  });

  it("counts a reply cut at LLM_MAX_REPLY_BYTES as length, and a reason of its own as other", async () => {
    const long: LlmBackend = {
      name: "long (test double)",
      async generate() {
        return { reply: "x".repeat(100), finishReason: "stop" };
      },
      async *stream() {
        yield "x".repeat(100);
      },
    };
    const cut = serviceWith(long, 10);
    await cut.client.generate({ text: "hi" });
    await drain(cut.client.generateStream({ text: "hi" }));
    expect(
      await cut.sample(
        'chatmesh_llm_replies_total{model="long (test double)",finish_reason="length"}',
      ),
    ).toBe(2);
    const odd = serviceWith(countingModel(0, "abort"));
    await odd.client.generate({ text: "hi" });
    expect(
      await odd.sample('chatmesh_llm_replies_total{model="counter-1",finish_reason="other"}'),
    ).toBe(1);
  });

  it("are served on the LLM process's /metrics: echo's replies end as stop, its tokens uncounted (0)", async () => {
    const { app } = await buildLlm(loadLlmConfig({ LOG_LEVEL: "silent" }));
    try {
      await app.listen({ host: "127.0.0.1", port: 0 });
      const baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
      const client = createClient(LLMService, createGrpcTransport({ baseUrl }));
      await client.generate({ text: "hi" });
      await drain(client.generateStream({ text: "hi there" }));
      const text = (await app.inject({ method: "GET", url: "/metrics" })).body;
      expect(text).toContain('chatmesh_llm_replies_total{model="echo",finish_reason="stop"} 2');
      expect(text).toContain('chatmesh_llm_time_to_first_token_seconds_count{model="echo"} 1');
      expect(text).toContain('chatmesh_llm_tokens_total{model="echo",kind="prompt"} 0');
      expect(text).toContain('chatmesh_llm_tokens_total{model="echo",kind="completion"} 0');
    } finally {
      await app.close();
    }
  });
});
