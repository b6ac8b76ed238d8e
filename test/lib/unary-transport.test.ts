import { create } from "@bufbuild/protobuf";
import {
  Code,
  createClient,
  createContextKey,
  createRouterTransport,
  type Interceptor,
  type UnaryRequest,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { GenerateResponseSchema, LLMService } from "../../gen/chat/v1/llm_pb.js";
import {
  answered,
  Cancellation,
  cancellationKey,
  createUnaryTransport,
  type RequestHeaders,
  requestHeaders,
  withCancellation,
} from "../../src/lib/unary-transport.js";
import { runScript } from "../fixtures/processes.js";

type HeaderInit = ConstructorParameters<typeof Headers>[0];

/**
 * Calls LLMService.Generate through a unary transport whose send reports
 * what `requestHeaders` reads of the request, then what `req.header` holds.
 */
async function seen(
  headers: HeaderInit | undefined,
  options: { timeoutMs?: number; interceptors?: Interceptor[]; onlyFast?: boolean } = {},
) {
  let fast: RequestHeaders | undefined;
  let madeHeaders = true;
  let slow: RequestHeaders | undefined;
  const transport = createUnaryTransport({
    defaultTimeoutMs: 1234,
    streamTransport: createGrpcTransport({ baseUrl: "http://127.0.0.1:1" }),
    ...(options.interceptors === undefined ? {} : { interceptors: options.interceptors }),
    send: async (req: UnaryRequest) => {
      fast = requestHeaders(req, 1234);
      madeHeaders = (req as unknown as { headerRead: boolean }).headerRead;
      if (options.onlyFast) return answered(req, create(GenerateResponseSchema, { reply: "ok" }));
      // As a transport read it before: every header from `Headers`.
      const pairs: string[] = [];
      req.header.forEach((value, key) => {
        if (key !== "connect-timeout-ms") pairs.push(key, value);
      });
      slow = { timeoutMs: Number(req.header.get("connect-timeout-ms")), pairs };
      return answered(req, create(GenerateResponseSchema, { reply: "ok" }));
    },
  });
  const client = createClient(LLMService, transport);
  await client.generate(
    { text: "hi" },
    {
      ...(headers === undefined ? {} : { headers }),
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    },
  );
  return { fast, slow, madeHeaders };
}

describe("requestHeaders", () => {
  it("reads plain call headers without making a Headers", async () => {
    const { fast, slow, madeHeaders } = await seen(
      {
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-request-id": "r-1",
      },
      { timeoutMs: 250 },
    );
    expect(madeHeaders).toBe(false);
    expect(fast).toEqual({
      timeoutMs: 250,
      pairs: [
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-request-id",
        "r-1",
      ],
    });
    // Headers sorts its names; the same pairs either way.
    expect(slow?.timeoutMs).toBe(250);
    expect(sortedPairs(fast?.pairs)).toEqual(sortedPairs(slow?.pairs));
  });

  it("gives the transport's default deadline to a call without one", async () => {
    const { fast, madeHeaders } = await seen(undefined);
    expect(madeHeaders).toBe(false);
    expect(fast).toEqual({ timeoutMs: 1234, pairs: [] });
  });

  it.each<[string, HeaderInit]>([
    ["names in capitals", { "X-Request-Id": "r-2", "x-request-id": "r-3" }],
    ["values with surrounding spaces", { "x-tenant": "  acme\t" }],
    ["a Latin-1 value", { "x-tenant": "caf\u00e9" }],
    ["a deadline among the headers", { "connect-timeout-ms": "99", "x-a": "b" }],
    [
      "pairs",
      [
        ["x-a", "1"],
        ["X-A", "2"],
      ],
    ],
    ["a Headers", new Headers({ "x-a": "1", "x-b": "2" })],
  ])("reads %s as Headers does", async (_, headers) => {
    const { fast, slow } = await seen(headers, { timeoutMs: 300 });
    expect(fast?.timeoutMs).toBe(slow?.timeoutMs);
    expect(fast?.timeoutMs).toBe(300);
    expect(sortedPairs(fast?.pairs)).toEqual(sortedPairs(slow?.pairs));
  });

  it("sees what an interceptor set", async () => {
    const tenant: Interceptor = (next) => (req) => {
      req.header.set("x-tenant", "acme");
      req.header.set("connect-timeout-ms", "77");
      return next(req);
    };
    const { fast, madeHeaders } = await seen({ "x-request-id": "r-4" }, { interceptors: [tenant] });
    expect(madeHeaders).toBe(true);
    expect(fast?.timeoutMs).toBe(77);
    expect(sortedPairs(fast?.pairs)).toEqual([
      ["x-request-id", "r-4"],
      ["x-tenant", "acme"],
    ]);
  });

  it("does not load undici (the global Headers) for a call with plain headers", async () => {
    // In a process of its own: this worker has made a Headers already.
    expect(await runScript(new URL("../fixtures/plain-headers.ts", import.meta.url))).toEqual({
      before: false,
      after: false,
      reply: "ok",
      seen: { timeoutMs: 250, pairs: ["x-request-id", "r-1"] },
    });
  });

  it("refuses a header value Headers refuses, as a TypeError", async () => {
    for (const bad of ["a\nb", "a\u0000b", "\u20ac"]) {
      await expect(seen({ "x-bad": bad }, { onlyFast: true })).rejects.toThrow(TypeError);
    }
  });
});

function sortedPairs(pairs: string[] | undefined): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i < (pairs?.length ?? 0); i += 2) {
    out.push([pairs?.[i] as string, pairs?.[i + 1] as string]);
  }
  return out.sort((a, b) => a[0].localeCompare(b[0]) || a[1].localeCompare(b[1]));
}

describe("withCancellation around a transport that knows only signals", () => {
  it("aborts the handler's call when its Cancellation is cancelled, and only then", async () => {
    const aborted: boolean[] = [];
    const transport = withCancellation(
      createRouterTransport((router) =>
        router.service(LLMService, {
          generate: (req, ctx) =>
            new Promise((resolve, reject) => {
              const cancel = () => {
                aborted.push(true);
                clearTimeout(timer);
                reject(ctx.signal.reason);
              };
              const timer = setTimeout(() => {
                // (The router aborts every call's signal once it is done: that is no cancel.)
                ctx.signal.removeEventListener("abort", cancel);
                aborted.push(false);
                resolve({ reply: `Echo: ${req.text}` });
              }, 200);
              ctx.signal.addEventListener("abort", cancel, { once: true });
            }),
        }),
      ),
    );
    const client = createClient(LLMService, transport);
    expect(
      (await client.generate({ text: "kept" }, { contextValues: new Cancellation() })).reply,
    ).toBe("Echo: kept");
    const gone = new Cancellation();
    const call = client.generate({ text: "left" }, { contextValues: gone });
    setTimeout(() => gone.cancel(), 20);
    await expect(call).rejects.toMatchObject({ code: Code.Canceled });
    expect(aborted).toEqual([false, true]);
  });
});

describe("a Cancellation as a call's context values", () => {
  it("gives itself for its key, and keeps what an interceptor sets", () => {
    const cancellation = new Cancellation();
    const contextValues = cancellation;
    const other = createContextKey("default");
    expect(contextValues.get(cancellationKey)).toBe(cancellation);
    expect(contextValues.get(other)).toBe("default");
    expect(contextValues.set(other, "set").get(other)).toBe("set");
    expect(contextValues.delete(other).get(other)).toBe("default");
    expect(contextValues.set(cancellationKey, undefined).get(cancellationKey)).toBe(cancellation);
  });
});
