import net, { type AddressInfo } from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type ServiceImpl } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  GenerateRequestSchema,
  GenerateResponseSchema,
  LLMService,
} from "../../gen/chat/v1/llm_pb.js";
import { Health } from "../../gen/health/v1/health_pb.js";
import { freePort } from "../../src/dev/ports.js";
import { loadLlmConfig } from "../../src/lib/config.js";
import {
  decodeRequest,
  encodeFrame,
  encodeRequest,
  FrameKind,
  FrameReader,
  framesPreface,
} from "../../src/lib/frames.js";
import { headerValue } from "../../src/lib/frames-server.js";
import {
  createFramesTransport,
  type FramesTransportOptions,
} from "../../src/lib/frames-transport.js";
import { createLogger } from "../../src/lib/logger.js";
import { createRpcServer } from "../../src/lib/rpc-server.js";
import { createEchoBackend } from "../../src/services/llm/echo-backend.js";
import { createLlmService } from "../../src/services/llm/llm-service.js";
import { codeOf } from "../fixtures/rpc.js";

describe("the frames wire format", () => {
  it("reads the same frames however the stream is cut", () => {
    const frames = Array.from({ length: 50 }, (_, i) =>
      encodeFrame(FrameKind.Ok, i + 1, Buffer.alloc(i * 7, i)),
    );
    const stream = Buffer.concat(frames);
    for (let trial = 0; trial < 20; trial++) {
      const seen: [number, number, Buffer][] = [];
      const reader = new FrameReader(
        1 << 20,
        (kind, id, body) => seen.push([kind, id, Buffer.from(body)]),
        () => expect.unreachable(),
      );
      let at = 0;
      while (at < stream.length) {
        const n = 1 + Math.floor(Math.random() * 40);
        reader.push(stream.subarray(at, at + n));
        at += n;
      }
      expect(seen).toEqual(
        frames.map((_, i) => [FrameKind.Ok, i + 1, Buffer.alloc(i * 7, i)] as const),
      );
    }
  });

  it("joins the chunks of a large frame once, when it is whole, not at every chunk", () => {
    const body = Buffer.alloc(1 << 20, 7);
    const stream = encodeFrame(FrameKind.Request, 9, body);
    const seen: Buffer[] = [];
    const reader = new FrameReader(
      2 << 20,
      (_kind, _id, frame) => seen.push(Buffer.from(frame)),
      () => expect.unreachable(),
    );
    const concat = vi.spyOn(Buffer, "concat");
    try {
      for (let at = 0; at < stream.length; at += 1_000) {
        reader.push(stream.subarray(at, at + 1_000));
        expect(reader.partial).toBe(at + 1_000 < stream.length);
      }
      // One join when the header was whole, one when the frame was: not ~1,000.
      expect(concat.mock.calls.length).toBeLessThanOrEqual(2);
    } finally {
      concat.mockRestore();
    }
    expect(seen).toEqual([body]);
  });

  it("skips a frame over the limit, reports it, and reads the next one", () => {
    const seen: number[] = [];
    const tooLarge: number[] = [];
    const reader = new FrameReader(
      100,
      (_kind, id) => seen.push(id),
      (_kind, id) => tooLarge.push(id),
    );
    const stream = Buffer.concat([
      encodeFrame(FrameKind.Request, 1, Buffer.alloc(10)),
      encodeFrame(FrameKind.Request, 2, Buffer.alloc(5_000)),
      encodeFrame(FrameKind.Request, 3, Buffer.alloc(10)),
    ]);
    for (let at = 0; at < stream.length; at += 333) reader.push(stream.subarray(at, at + 333));
    expect([seen, tooLarge]).toEqual([[1, 3], [2]]);
  });

  it("reads a header from a request's pairs as Headers.get does", () => {
    const cases: string[][] = [
      [],
      ["traceparent", "00-abc"],
      ["TraceParent", " 00-abc\t", "x-other", "1"],
      ["traceparent", "a", "x-request-id", "r", "traceparent", "b"],
      ["x-request-id", "r"],
      ["traceparent", "\u00a0a\u00a0"],
    ];
    for (const pairs of cases) {
      const headers = new Headers();
      for (let i = 0; i < pairs.length; i += 2) headers.append(pairs[i] ?? "", pairs[i + 1] ?? "");
      for (const name of ["traceparent", "x-request-id"]) {
        expect(headerValue(pairs, name), JSON.stringify(pairs)).toBe(headers.get(name));
      }
    }
  });

  it("round-trips a request and refuses a truncated one", () => {
    const request = {
      timeoutMs: 1500,
      path: "/chat.v1.LLMService/Generate",
      headers: ["traceparent", "00-abc", "x-request-id", "r-1"],
      message: new Uint8Array([1, 2, 3]),
    };
    const frame = encodeRequest(7, request);
    expect(frame.readUInt32BE(0)).toBe(frame.length - 4);
    const body = frame.subarray(9);
    expect({ ...decodeRequest(body), message: [...decodeRequest(body).message] }).toEqual({
      ...request,
      message: [1, 2, 3],
    });
    expect(() => decodeRequest(body.subarray(0, 40))).toThrow(RangeError);
  });
});

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

async function start(options: { delayMs?: number; port?: number; env?: Record<string, string> }) {
  app = await createRpcServer({
    name: "llm",
    config: loadLlmConfig(options.env ?? {}),
    logger: createLogger("llm", "silent"),
    routes: (router) =>
      router.service(
        LLMService,
        createLlmService({ backend: createEchoBackend({ delayMs: options.delayMs ?? 0 }) }),
      ),
  });
  await app.listen({ host: "127.0.0.1", port: options.port ?? 0 });
  const { port } = app.server.address() as AddressInfo;
  return { port, baseUrl: `http://127.0.0.1:${port}` };
}

const connectionsOf = (server: net.Server) =>
  new Promise<number>((resolve, reject) =>
    server.getConnections((err, n) => (err ? reject(err) : resolve(n))),
  );

const framesClient = (
  baseUrl: string,
  defaultTimeoutMs = 5_000,
  dial?: FramesTransportOptions["dial"],
) =>
  createClient(
    LLMService,
    createFramesTransport({
      baseUrl,
      defaultTimeoutMs,
      streamTransport: createGrpcTransport({ baseUrl }),
      ...(dial === undefined ? {} : { dial }),
    }),
  );

/** An LLM service whose Generate is `generate`; its port. */
async function startGeneratingWith(
  generate: ServiceImpl<typeof LLMService>["generate"],
): Promise<number> {
  app = await createRpcServer({
    name: "llm",
    config: loadLlmConfig({}),
    logger: createLogger("llm", "silent"),
    routes: (router) => router.service(LLMService, { generate }),
  });
  await app.listen({ host: "127.0.0.1", port: 0 });
  return (app.server.address() as AddressInfo).port;
}

/** An LLM service whose Generate replies what `reply` makes of the request's headers; its port. */
const startReplyingWith = (reply: (headers: Headers) => string) =>
  startGeneratingWith((_req, ctx) => ({ reply: reply(ctx.requestHeader) }));

describe("unary calls over frames", () => {
  it("gives the handler the caller's headers when it reads them", async () => {
    const port = await startReplyingWith(
      (headers) => `${headers.get("x-tenant")} ${headers.get("x-request-id")}`,
    );
    const client = framesClient(`http://127.0.0.1:${port}`);
    const res = await client.generate(
      { text: "hi" },
      { headers: { "x-tenant": "acme", "x-request-id": "r-9" } },
    );
    expect(res.reply).toBe("acme r-9");
  });

  it("drops a header no HTTP request could carry, and serves the call with the others", async () => {
    const port = await startReplyingWith((headers) => [...headers.keys()].join(","));
    const socket = net.connect({ host: "127.0.0.1", port });
    const answered = new Promise<[number, Buffer]>((resolve) => {
      const reader = new FrameReader(
        1 << 20,
        (kind, _id, body) => resolve([kind, Buffer.from(body)]),
        () => {},
      );
      socket.on("data", (chunk: Buffer) => reader.push(chunk));
    });
    socket.write(
      Buffer.concat([
        framesPreface,
        encodeRequest(1, {
          timeoutMs: 0,
          path: "/chat.v1.LLMService/Generate",
          headers: ["bad name", "1", "x-tenant", "acme", "x-nul", "a\u0000b"],
          message: toBinary(GenerateRequestSchema, create(GenerateRequestSchema, { text: "hi" })),
        }),
      ]),
    );
    try {
      const [kind, body] = await answered;
      expect(kind).toBe(FrameKind.Ok);
      expect(fromBinary(GenerateResponseSchema, body).reply).toBe("x-tenant");
    } finally {
      socket.destroy();
    }
  });

  it("multiplexes many calls in flight on one connection", async () => {
    const { baseUrl } = await start({ delayMs: 20 });
    const client = framesClient(baseUrl);
    const replies = await Promise.all(
      Array.from({ length: 200 }, (_, i) => client.generate({ text: `m${i}` })),
    );
    expect(replies.map((r) => r.reply)).toEqual(
      Array.from({ length: 200 }, (_, i) => `Echo: m${i}`),
    );
    expect(await connectionsOf(app?.server as net.Server)).toBe(1);
  });

  it('answers a handler\'s own failure as INTERNAL "internal error" on every path, as the router does', async () => {
    const port = await startGeneratingWith((req) => {
      if (req.text === "plain") throw new Error("db password=hunter2 at 10.0.0.5");
      throw new ConnectError("not now", Code.FailedPrecondition, { "retry-after-ms": "250" });
    });
    const baseUrl = `http://127.0.0.1:${port}`;
    const transports = {
      frames: createFramesTransport({
        baseUrl,
        defaultTimeoutMs: 5_000,
        streamTransport: createGrpcTransport({ baseUrl }),
      }),
      lean: createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true }),
      router: createGrpcTransport({ baseUrl }),
    };
    for (const [name, transport] of Object.entries(transports)) {
      const client = createClient(LLMService, transport);
      const plain = ConnectError.from(await client.generate({ text: "plain" }).catch((e) => e));
      expect([name, plain.code, plain.rawMessage]).toEqual([name, Code.Internal, "internal error"]);
      const own = ConnectError.from(await client.generate({ text: "own" }).catch((e) => e));
      expect([name, own.code, own.rawMessage]).toEqual([name, Code.FailedPrecondition, "not now"]);
      if (name !== "frames")
        expect([name, own.metadata.get("retry-after-ms")]).toEqual([name, "250"]);
    }
  });

  it("carries the service's errors, unknown methods and oversized messages as Connect codes", async () => {
    const { baseUrl, port } = await start({ env: { MAX_REQUEST_BYTES: "2048" } });
    const client = framesClient(baseUrl);
    expect(await codeOf(client.generate({ text: "" }))).toBe("InvalidArgument");
    expect(await codeOf(client.generate({ text: "x".repeat(100_000) }))).toBe("ResourceExhausted");
    const health = createClient(
      Health,
      createFramesTransport({
        baseUrl,
        defaultTimeoutMs: 1_000,
        streamTransport: createGrpcTransport({ baseUrl }),
      }),
    );
    expect((await health.check({ service: LLMService.typeName })).status).toBe(1);
    // A header the format cannot carry fails that call alone.
    expect(
      await codeOf(client.generate({ text: "hi" }, { headers: { "x-big": "a".repeat(70_000) } })),
    ).toBe("InvalidArgument");
    // The same connection keeps working after errors.
    expect((await client.generate({ text: "still here" })).reply).toBe("Echo: still here");
    // A method nobody serves, asked for on a raw connection.
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.write(framesPreface);
    socket.write(
      encodeRequest(9, {
        timeoutMs: 0,
        path: "/x.v1.Nobody/Call",
        headers: [],
        message: new Uint8Array(),
      }),
    );
    const answer = await new Promise<[number, number, string]>((resolve) => {
      const reader = new FrameReader(
        1 << 20,
        (kind, id, body) => resolve([kind, id, body.toString()]),
        () => {},
      );
      socket.on("data", (chunk: Buffer) => reader.push(chunk));
    });
    socket.destroy();
    expect(answer[0]).toBe(FrameKind.Error);
    expect(answer[1]).toBe(9);
    expect(JSON.parse(answer[2])).toMatchObject({ code: "unimplemented" });
  });

  it("keeps deadlines and cancels, and the connection serves the next call", async () => {
    const { baseUrl } = await start({ delayMs: 400 });
    const client = framesClient(baseUrl);
    const started = Date.now();
    expect(await codeOf(client.generate({ text: "slow" }, { timeoutMs: 50 }))).toBe(
      "DeadlineExceeded",
    );
    expect(Date.now() - started).toBeLessThan(300);
    const abort = new AbortController();
    const cancelled = client.generate({ text: "slow" }, { signal: abort.signal });
    setTimeout(() => abort.abort(), 20);
    expect(await codeOf(cancelled)).toBe("Canceled");
    expect((await client.generate({ text: "next" })).reply).toBe("Echo: next");
  });

  it("finishes calls in flight when the server closes, then uses a restarted server", async () => {
    const { baseUrl, port } = await start({ delayMs: 200 });
    const client = framesClient(baseUrl);
    expect((await client.generate({ text: "warm up" })).reply).toBe("Echo: warm up");
    const inFlight = client.generate({ text: "in flight" });
    await new Promise((r) => setTimeout(r, 50));
    await app?.close();
    app = undefined;
    expect((await inFlight).reply).toBe("Echo: in flight");
    expect(await codeOf(client.generate({ text: "nobody" }))).toBe("Unavailable");
    await start({ port });
    expect((await client.generate({ text: "again" })).reply).toBe("Echo: again");
  });

  it("sends a call that a draining server refused to another replica, while the server finishes its own", async () => {
    // Two replicas behind one address, as a Kubernetes Service: the first
    // connection reaches the one that is stopped, later ones the other.
    const { port: oldPort } = await start({ delayMs: 300 });
    const old = app as FastifyInstance;
    const { port: newPort } = await start({});
    let dials = 0;
    const client = framesClient(`http://127.0.0.1:${oldPort}`, 5_000, (options) =>
      net.connect({ ...options, port: dials++ === 0 ? oldPort : newPort }),
    );
    const inFlight = client.generate({ text: "in flight" });
    await new Promise((r) => setTimeout(r, 50));
    const closed = old.close();
    // Sent on the old replica's connection while its call in flight keeps it open.
    const during = await Promise.all([1, 2, 3].map((n) => client.generate({ text: `new ${n}` })));
    expect(during.map((r) => r.reply)).toEqual(["Echo: new 1", "Echo: new 2", "Echo: new 3"]);
    expect((await inFlight).reply).toBe("Echo: in flight");
    await closed;
    expect(dials).toBe(2);
  });

  it("sends once more a call whose connection the server ended before answering it (a draining server closing it as the call went out)", async () => {
    // The first connection reaches a server that ends it as the call
    // arrives, unanswered, as a draining service ends an idle connection
    // while a call is on its way; later ones reach a real replica.
    const ending = net.createServer((socket) => socket.once("data", () => socket.end()));
    await new Promise<void>((resolve) => ending.listen(0, "127.0.0.1", resolve));
    const endingPort = (ending.address() as AddressInfo).port;
    const { port } = await start({});
    let dials = 0;
    const client = framesClient(`http://127.0.0.1:${port}`, 5_000, (options) =>
      net.connect({ ...options, port: dials++ === 0 ? endingPort : port }),
    );
    try {
      expect((await client.generate({ text: "went out" })).reply).toBe("Echo: went out");
      expect(dials).toBe(2);
    } finally {
      ending.close();
    }
  });

  it("drops a connection whose server stopped reading, failing its calls fast as Unavailable", async () => {
    // A server that accepts connections and never reads from them.
    const stuck = net.createServer((socket) => socket.pause());
    await new Promise<void>((resolve) => stuck.listen(0, "127.0.0.1", resolve));
    const { port } = stuck.address() as AddressInfo;
    try {
      const client = framesClient(`http://127.0.0.1:${port}`, 20_000);
      const started = Date.now();
      const text = "x".repeat(512 * 1024);
      // Calls keep coming, as under load, until one ends: the kernel's
      // buffers take a few MiB (how many varies), then the buffered bytes
      // pass the limit and the connection is dropped. The drop is seen
      // before the next call is sent, so no call goes to a new connection.
      const calls: Promise<string>[] = [];
      let ended = false;
      while (!ended && calls.length < 200) {
        calls.push(
          codeOf(client.generate({ text })).then((code) => {
            ended = true;
            return code;
          }),
        );
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(ended).toBe(true);
      expect(Date.now() - started).toBeLessThan(10_000);
      const codes = await Promise.all(calls);
      expect(new Set(codes)).toEqual(new Set(["Unavailable"]));
    } finally {
      stuck.close();
    }
  });

  it("drops a connection to itself at once, leaving the port to the service", async () => {
    const port = await freePort();
    const baseUrl = `http://127.0.0.1:${port}`;
    let dials = 0;
    // The first connection gets the source port the system could pick by
    // chance when nothing listens: the port dialled.
    const client = framesClient(baseUrl, 5_000, (options) =>
      net.connect(
        dials++ === 0 ? { ...options, localAddress: "127.0.0.1", localPort: port } : options,
      ),
    );
    const started = Date.now();
    const failed = await client.generate({ text: "nobody" }).catch((err: unknown) => err);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(ConnectError.from(failed).code).toBe(Code.Unavailable);
    expect(ConnectError.from(failed).rawMessage).toContain("connected to itself");
    // The port is free again: the service starts on it and is used.
    await start({ port });
    expect((await client.generate({ text: "again" })).reply).toBe("Echo: again");
    expect(dials).toBe(2);
  });

  it("closes a connection idle after a call that outlasted the idle timeout, and a call made as it closes opens a new one", async () => {
    const { baseUrl } = await start({ delayMs: 300 });
    const sockets: net.Socket[] = [];
    let client: ReturnType<typeof framesClient> | undefined;
    let callAtIdle: Promise<string> | undefined;
    let slowDone = false;
    client = createClient(
      LLMService,
      createFramesTransport({
        baseUrl,
        defaultTimeoutMs: 5_000,
        idleTimeoutMs: 100,
        streamTransport: createGrpcTransport({ baseUrl }),
        dial: (options) => {
          const socket = net.connect(options);
          sockets.push(socket);
          // After the transport's own idle handling: a call made just as it closes.
          socket.once("connect", () =>
            socket.on("timeout", () => {
              if (slowDone && callAtIdle === undefined && client !== undefined) {
                callAtIdle = client.generate({ text: "at idle" }).then(
                  (r) => r.reply,
                  (err: unknown) => ConnectError.from(err).rawMessage,
                );
              }
            }),
          );
          return socket;
        },
      }),
    );
    // 300 ms without a byte on the connection: its idle timeout passes mid-call.
    expect((await client.generate({ text: "slow" })).reply).toBe("Echo: slow");
    slowDone = true;
    const first = sockets[0] as net.Socket;
    const closed = await Promise.race([
      new Promise((r) => first.once("close", () => r("closed"))),
      new Promise((r) => setTimeout(() => r("still open"), 1_500)),
    ]);
    expect(closed).toBe("closed");
    expect(await callAtIdle).toBe("Echo: at idle");
    expect(sockets).toHaveLength(2);
    client = undefined;
    for (const socket of sockets) socket.destroy();
  });

  it.each([
    ["a frame too short to be one", Buffer.from([0, 0, 0, 1, 9, 9, 9, 9, 9])],
    [
      "a second call under an id in flight",
      Buffer.concat(
        [1, 2].map(() =>
          encodeRequest(5, {
            timeoutMs: 0,
            path: "/chat.v1.LLMService/Generate",
            headers: [],
            message: new Uint8Array([10, 2, 104, 105]),
          }),
        ),
      ),
    ],
  ])("closes a connection that sends %s, and goes on serving", async (_, garbage) => {
    const { port, baseUrl } = await start({ delayMs: 200 });
    const socket = net.connect({ host: "127.0.0.1", port });
    const closed = new Promise((resolve) => socket.once("close", resolve));
    socket.on("error", () => {});
    socket.write(Buffer.concat([framesPreface, garbage]));
    await closed;
    expect((await framesClient(baseUrl).generate({ text: "fine" })).reply).toBe("Echo: fine");
  });

  it("keeps a busy connection whose reads each end part way into the next frame, past REQUEST_TIMEOUT_MS", async () => {
    const { port } = await start({ env: { REQUEST_TIMEOUT_MS: "300" } });
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.on("error", () => {});
    let closed = false;
    socket.once("close", () => {
      closed = true;
    });
    let answers = 0;
    const reader = new FrameReader(
      1 << 20,
      () => answers++,
      () => {},
    );
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
    const frame = (id: number) =>
      encodeRequest(id, {
        timeoutMs: 0,
        path: "/chat.v1.LLMService/Generate",
        headers: [],
        message: new Uint8Array([10, 2, 104, 105]),
      });
    // Each write ends half way into a frame, which the next write completes
    // 20 ms later: every frame arrives whole within 20 ms, and the calls keep
    // coming for well over the timeout.
    socket.write(framesPreface);
    let rest: Buffer = Buffer.alloc(0);
    let id = 1;
    const started = Date.now();
    while (Date.now() - started < 1_200 && !closed) {
      const next = frame(id++);
      const half = next.length >> 1;
      socket.write(Buffer.concat([rest, frame(id++), next.subarray(0, half)]));
      rest = next.subarray(half);
      await new Promise((r) => setTimeout(r, 20));
    }
    socket.write(rest);
    await new Promise((r) => setTimeout(r, 100));
    expect(closed).toBe(false);
    expect(answers).toBe(id - 1);
    socket.destroy();
  });

  it("drops a connection whose frame stops arriving half way, after REQUEST_TIMEOUT_MS; an idle one stays", async () => {
    const { port, baseUrl } = await start({ env: { REQUEST_TIMEOUT_MS: "300" } });
    const open = (bytes: Buffer) => {
      const socket = net.connect({ host: "127.0.0.1", port });
      socket.on("error", () => {});
      const closed = new Promise<number>((resolve) =>
        socket.once("close", () => resolve(Date.now())),
      );
      socket.write(Buffer.concat([framesPreface, bytes]));
      return { socket, closed };
    };
    const request = encodeRequest(1, {
      timeoutMs: 0,
      path: "/chat.v1.LLMService/Generate",
      headers: [],
      message: new Uint8Array(50_000),
    });
    const started = Date.now();
    const halfWay = open(request.subarray(0, 20_000));
    const idle = open(Buffer.alloc(0));
    const closedAt = await halfWay.closed;
    // Past the timeout, and within the check's interval (the timeout here) of it.
    expect(closedAt - started).toBeGreaterThanOrEqual(300);
    expect(closedAt - started).toBeLessThan(1_500);
    expect(idle.socket.destroyed).toBe(false);
    idle.socket.destroy();
    expect((await framesClient(baseUrl).generate({ text: "fine" })).reply).toBe("Echo: fine");
  });
});
