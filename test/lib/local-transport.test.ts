import { create } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { GenerateRequestSchema, LLMService } from "../../gen/chat/v1/llm_pb.js";
import { loadLlmConfig } from "../../src/lib/config.js";
import { createLocalTransport } from "../../src/lib/local-transport.js";
import type { Logger } from "../../src/lib/logger.js";
import { createLogger } from "../../src/lib/logger.js";
import { createMetricsRegistry, createRpcMetricsInterceptor } from "../../src/lib/metrics.js";
import { createRpcServer, localServiceOf } from "../../src/lib/rpc-server.js";
import { traceOf } from "../../src/lib/trace.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { codeOf } from "../fixtures/rpc.js";

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

const traceId = "0af7651916cd43dd8448eb211c80319c";

/** An LLM service that answers what its handler saw; nothing listens on a port. */
async function localClient(
  seen: { signal?: AbortSignal } = {},
  caller: { interceptors?: Interceptor[]; logger?: Logger } = {},
) {
  const registry = createMetricsRegistry();
  app = await createRpcServer({
    name: "llm",
    config: loadLlmConfig({}),
    logger: caller.logger ?? createLogger("llm", "silent"),
    registry,
    routes: (router) =>
      router.service(LLMService, {
        async generate(req, ctx) {
          seen.signal = ctx.signal;
          if (req.text === "slow") await new Promise((r) => setTimeout(r, 2_000));
          if (req.text === "missing") throw new ConnectError("no such model", Code.NotFound);
          if (req.text === "broken") throw new TypeError("oops");
          const deadline = ctx.timeoutMs();
          return {
            reply: [
              traceOf(ctx)?.traceId,
              ctx.requestHeader.get("x-tenant"),
              ctx.requestHeader.has("connect-timeout-ms"),
              deadline !== undefined && deadline > 0 && deadline <= 1_500,
            ].join(" "),
          };
        },
        async *generateStream(req) {
          for (const word of req.text.split(" ")) yield { delta: word };
        },
      }),
  });
  await app.ready();
  const client = createClient(
    LLMService,
    createLocalTransport({
      service: localServiceOf(app),
      defaultTimeoutMs: 1_500,
      ...(caller.interceptors && { interceptors: caller.interceptors }),
    }),
  );
  return { client, registry };
}

describe("calls to a service in the same process", () => {
  it("hand the handler the caller's trace, headers and deadline, and count in the server's metrics", async () => {
    const { client, registry } = await localClient();
    const res = await client.generate(
      { text: "hi" },
      { headers: { traceparent: `00-${traceId}-b7ad6b7169203331-01`, "x-tenant": "acme" } },
    );
    expect(res.reply).toBe(`${traceId} acme false true`);
    const metrics = await registry.metrics();
    expect(metrics).toMatch(
      /rpc_server_handled_total\{service="chat\.v1\.LLMService",method="Generate",code="ok"\} 1/,
    );
  });

  it("hand the handler a request's fields sent as unknown bytes decoded, as the wire would", async () => {
    const { client } = await localClient();
    // Field 1 (text) = "missing", written as protobuf-es writes unknown fields.
    const text = new TextEncoder().encode("missing");
    const request = create(GenerateRequestSchema);
    request.$unknown = [
      { no: 1, wireType: WireType.LengthDelimited, data: new Uint8Array([text.length, ...text]) },
    ];
    expect(await codeOf(client.generate(request))).toBe("NotFound");
  });

  it("end with the handler's error, its code and message kept, as a ConnectError", async () => {
    const { client } = await localClient();
    const err = await client.generate({ text: "missing" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect([Code[(err as ConnectError).code], (err as ConnectError).rawMessage]).toEqual([
      "NotFound",
      "no such model",
    ]);
    const broken = await client.generate({ text: "broken" }).catch((e: unknown) => e);
    expect(broken).toBeInstanceOf(ConnectError);
    expect([Code[(broken as ConnectError).code], (broken as ConnectError).rawMessage]).toEqual([
      "Unknown",
      "oops",
    ]);
  });

  it("time out at the caller's deadline, and cancel with the caller's signal", async () => {
    const seen: { signal?: AbortSignal } = {};
    const { client } = await localClient(seen);
    const started = Date.now();
    expect(await codeOf(client.generate({ text: "slow" }, { timeoutMs: 100 }))).toBe(
      "DeadlineExceeded",
    );
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(seen.signal?.aborted).toBe(true);

    const controller = new AbortController();
    const call = client.generate({ text: "slow" }, { signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    expect(await codeOf(call)).toBe("Canceled");
    expect(seen.signal?.aborted).toBe(true);
  });

  it("stream through the service's in-memory router", async () => {
    const { client } = await localClient();
    const words: string[] = [];
    for await (const chunk of client.generateStream({ text: "one two three" })) {
      words.push(chunk.delta);
    }
    expect(words).toEqual(["one", "two", "three"]);
  });

  it("go through the caller's interceptors and are logged by the service, streams too", async () => {
    const callerRegistry = createMetricsRegistry();
    const { logger, lines } = createMemoryLogger();
    const { client } = await localClient(
      {},
      { interceptors: [createRpcMetricsInterceptor(callerRegistry, "client")], logger },
    );
    // Without a trace: the line shows the one the handler got.
    const reply = (await client.generate({ text: "hi" })).reply;
    for await (const _ of client.generateStream({ text: "one two" })) {
      // drained
    }
    const metrics = await callerRegistry.metrics();
    for (const method of ["Generate", "GenerateStream"]) {
      expect(metrics).toContain(
        `rpc_client_handled_total{service="chat.v1.LLMService",method="${method}",code="ok"} 1`,
      );
    }
    const logged = lines.filter((l) => l.msg === "request");
    expect(reply.split(" ")[0]).toBe(logged[0]?.trace_id);
    expect(logged.map((l) => [l.route, l.code])).toEqual([
      ["/chat.v1.LLMService/Generate", "ok"],
      ["/chat.v1.LLMService/GenerateStream", "ok"],
    ]);
    expect(logged.every((l) => l.protocol === "local" && typeof l.ms === "number")).toBe(true);
  });

  it("count and log a stream its caller cancels as canceled", async () => {
    const callerRegistry = createMetricsRegistry();
    const { logger, lines } = createMemoryLogger();
    const { client } = await localClient(
      {},
      { interceptors: [createRpcMetricsInterceptor(callerRegistry, "client")], logger },
    );
    const controller = new AbortController();
    const stream = client.generateStream({ text: "one two three" }, { signal: controller.signal });
    const read = (async () => {
      for await (const _ of stream) controller.abort();
    })();
    expect(await codeOf(read)).toBe("Canceled");
    await expect
      .poll(() => callerRegistry.metrics(), { timeout: 2_000 })
      .toContain(
        'rpc_client_handled_total{service="chat.v1.LLMService",method="GenerateStream",code="canceled"} 1',
      );
    expect(lines.filter((l) => l.msg === "request").map((l) => l.code)).toEqual(["Canceled"]);
  });
});
