import { readFileSync, rmSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { gzipSync } from "node:zlib";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import {
  GenerateRequestSchema,
  GenerateResponseSchema,
  LLMService,
} from "../../gen/chat/v1/llm_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { loadLlmConfig } from "../../src/lib/config.js";
import {
  closeIdleHttp2Session,
  http2MaxConcurrentStreams,
} from "../../src/lib/dual-protocol-server.js";
import { createRpcServer } from "../../src/lib/rpc-server.js";
import { traceOf } from "../../src/lib/trace.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { startEchoLlmService } from "../fixtures/rpc.js";
import { makeTestCertificates, opensslOrSkip } from "../fixtures/tls.js";

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

async function start(delayMs = 0, env: Record<string, string> = {}): Promise<string> {
  const started = await startEchoLlmService(delayMs, env);
  app = started.app;
  return `http://127.0.0.1:${started.port}`;
}

describe("the RPC server bootstrap", () => {
  it("serves gRPC over HTTP/2 and Connect over HTTP/1.1 and HTTP/2 on one port", async () => {
    const baseUrl = await start();
    const clients = [
      createGrpcTransport({ baseUrl }),
      createConnectTransport({ baseUrl, httpVersion: "1.1" }),
      createConnectTransport({ baseUrl, httpVersion: "2" }),
    ].map((t) => createClient(LLMService, t));
    for (const client of clients) {
      expect((await client.generate({ text: "hi" })).reply).toBe("Echo: hi");
    }
  });

  it("answers GET /healthz over HTTP/1.1", async () => {
    const baseUrl = await start();
    const res = await fetch(`${baseUrl}/healthz`);
    expect([res.status, await res.text()]).toEqual([200, "ok"]);
  });

  it("finishes an in-flight call on close, then closes idle HTTP/1.1 and HTTP/2 connections", async () => {
    const baseUrl = await start(300);
    const h2 = createClient(LLMService, createGrpcTransport({ baseUrl }));
    await h2.generate({ text: "warm up" });
    const agent = new http.Agent({ keepAlive: true });
    const h1 = createClient(
      LLMService,
      createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { agent } }),
    );
    await h1.generate({ text: "keep this connection" });

    const slow = h2.generate({ text: "in flight" });
    await new Promise((r) => setTimeout(r, 50));
    const started = Date.now();
    await app?.close();
    app = undefined;
    expect((await slow).reply).toBe("Echo: in flight");
    expect(Date.now() - started).toBeLessThan(2_000);
    await expect(fetch(`${baseUrl}/healthz`)).rejects.toThrow();
    agent.destroy();
  });

  /**
   * A message over MAX_REQUEST_BYTES over HTTP/2 (gRPC and Connect) is refused,
   * the next call on the session is served, and the server then closes at once:
   * the refused request's stream is reset, not left open holding the session.
   */
  async function refusesOversizedThenCloses(
    baseUrl: string,
    nodeOptions: http2.SecureClientSessionOptions = {},
  ) {
    const clients = [
      createClient(LLMService, createGrpcTransport({ baseUrl, nodeOptions })),
      createClient(LLMService, createConnectTransport({ baseUrl, httpVersion: "2", nodeOptions })),
    ];
    const text = "x".repeat(1_200_000);
    for (const client of clients) {
      await expect(client.generate({ text })).rejects.toMatchObject({
        code: Code.ResourceExhausted,
      });
      expect((await client.generate({ text: "next" })).reply).toBe("Echo: next");
    }
    const closing = app?.close();
    app = undefined;
    const outcome = await Promise.race([
      closing?.then(() => "closed"),
      new Promise((r) => setTimeout(r, 5_000, "still open after 5 s")),
    ]);
    expect(outcome).toBe("closed");
  }

  it("refuses a message over MAX_REQUEST_BYTES over HTTP/2, serves the next call, and still closes at once", async () => {
    await refusesOversizedThenCloses(await start());
  });

  it.runIf(opensslOrSkip())("does the same over HTTP/2 with TLS", async () => {
    const certs = await makeTestCertificates();
    try {
      const started = await startEchoLlmService(0, {
        TLS_CERT_FILE: certs.certFile,
        TLS_KEY_FILE: certs.keyFile,
      });
      app = started.app;
      await refusesOversizedThenCloses(`https://127.0.0.1:${started.port}`, {
        ca: readFileSync(certs.caFile),
      });
    } finally {
      rmSync(certs.dir, { recursive: true, force: true });
    }
  });

  it("tells a health watcher NOT_SERVING on close, then ends its stream rather than wait for it", async () => {
    const baseUrl = await start();
    const health = createClient(Health, createGrpcTransport({ baseUrl }));
    const seen: string[] = [];
    let closing: Promise<unknown> | undefined;
    let started = 0;
    for await (const res of health.watch({ service: "" })) {
      seen.push(HealthCheckResponse_ServingStatus[res.status]);
      if (seen.length === 1) {
        started = Date.now();
        closing = app?.close();
        app = undefined;
      }
    }
    await closing;
    expect(seen).toEqual(["SERVING", "NOT_SERVING"]);
    // Its default SHUTDOWN_TIMEOUT_MS is 10 s.
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it("aborts the calls still running SHUTDOWN_TIMEOUT_MS after close began", async () => {
    const baseUrl = await start(5_000, { SHUTDOWN_TIMEOUT_MS: "200" });
    const client = createClient(LLMService, createGrpcTransport({ baseUrl }));
    const slow = client.generate({ text: "too slow" }).catch((err: unknown) => err);
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    await app?.close();
    app = undefined;
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(await slow).toBeInstanceOf(ConnectError);
  });

  it("serves many calls at once without a listener-leak warning", async () => {
    const baseUrl = await start(100);
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on("warning", onWarning);
    try {
      for (const transport of [
        createGrpcTransport({ baseUrl }),
        createConnectTransport({ baseUrl, httpVersion: "2" }),
      ]) {
        const client = createClient(LLMService, transport);
        const replies = await Promise.all(
          Array.from({ length: 30 }, (_, i) => client.generate({ text: `call ${i}` })),
        );
        expect(replies.map((r) => r.reply)).toEqual(
          Array.from({ length: 30 }, (_, i) => `Echo: call ${i}`),
        );
      }
      // Warnings are emitted on the next tick.
      await new Promise((r) => setImmediate(r));
      expect(warnings.map((w) => w.name)).not.toContain("MaxListenersExceededWarning");
    } finally {
      process.off("warning", onWarning);
    }
  });
});

/** A raw gRPC unary call over HTTP/2 with the given headers: its grpc-status. */
function rawGrpc(baseUrl: string, path: string, message: Uint8Array, headers: object) {
  return new Promise<string | undefined>((resolve, reject) => {
    const session = http2.connect(baseUrl);
    session.on("error", reject);
    const stream = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    let status: string | undefined;
    stream.on("response", (h) => {
      status ??= h["grpc-status"] as string | undefined;
    });
    stream.on("trailers", (t) => {
      status = t["grpc-status"] as string | undefined;
    });
    stream.resume();
    stream.on("close", () => {
      session.close();
      resolve(status);
    });
    const frame = Buffer.alloc(5 + message.length);
    frame.writeUInt32BE(message.length, 1);
    frame.set(message, 5);
    stream.end(frame);
  });
}

interface Answer {
  readonly status: number;
  readonly encoding: string | undefined;
  readonly bytes: Buffer;
  readonly body: string;
}

const answerOf = (status: number, encoding: unknown, chunks: Buffer[]): Answer => {
  const bytes = Buffer.concat(chunks);
  return {
    status,
    encoding: typeof encoding === "string" ? encoding : undefined,
    bytes,
    body: bytes.toString(),
  };
};

/** A POST over HTTP/2 (served by the router, never the lean path): its answer as sent. */
function h2Post(baseUrl: string, path: string, headers: object, body: Uint8Array) {
  return new Promise<Answer>((resolve, reject) => {
    const session = http2.connect(baseUrl);
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": path, ...headers });
    let response: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on("response", (h) => {
      response = h;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("close", () => {
      session.close();
      resolve(answerOf(Number(response[":status"]), response["content-encoding"], chunks));
    });
    stream.end(body);
  });
}

/** A POST over HTTP/1.1, its answer as sent (fetch would decompress it). */
function h1Post(
  baseUrl: string,
  path: string,
  headers: http.OutgoingHttpHeaders,
  body: Uint8Array,
) {
  return new Promise<Answer>((resolve, reject) => {
    const req = http.request(`${baseUrl}${path}`, { method: "POST", headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () =>
        resolve(answerOf(res.statusCode ?? 0, res.headers["content-encoding"], chunks)),
      );
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** Writes `parts` to a new connection 30 ms apart; resolves with the first bytes that come back. */
function splitWrites(port: number, parts: readonly (string | Buffer)[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", async () => {
      for (const part of parts) {
        socket.write(part);
        await new Promise((r) => setTimeout(r, 30));
      }
    });
    socket.once("data", (chunk) => {
      socket.destroy();
      resolve(chunk);
    });
    socket.on("error", reject);
    socket.on("close", () => resolve(Buffer.alloc(0)));
  });
}

describe("HTTP/2 limits", () => {
  it("lets a connection have 100 streams open at once", async () => {
    const baseUrl = await start();
    const session = http2.connect(baseUrl);
    session.on("error", () => {});
    try {
      await new Promise((resolve) => session.once("remoteSettings", resolve));
      expect(session.remoteSettings.maxConcurrentStreams).toBe(http2MaxConcurrentStreams);
      expect(http2MaxConcurrentStreams).toBe(100);
    } finally {
      session.destroy();
    }
  });

  /**
   * Opens a gRPC call on `session` that sends the first 10 bytes of a
   * 1,000-byte message and no more: how its stream ended, and when (no
   * code if it had not ended after 3 s).
   */
  function stallHalfWay(session: http2.ClientHttp2Session) {
    const stream = session.request({
      ":method": "POST",
      ":path": "/chat.v1.LLMService/Generate",
      "content-type": "application/grpc",
      te: "trailers",
    });
    const frame = Buffer.alloc(15);
    frame.writeUInt32BE(1_000, 1);
    stream.write(frame);
    stream.on("error", () => {});
    stream.resume();
    const started = Date.now();
    return new Promise<{ rstCode: number | undefined; ms: number }>((resolve) => {
      stream.once("close", () => resolve({ rstCode: stream.rstCode, ms: Date.now() - started }));
      setTimeout(() => resolve({ rstCode: undefined, ms: Date.now() - started }), 3_000);
    });
  }

  async function cancelsStalledRequests(
    baseUrl: string,
    lines: Record<string, unknown>[],
    options: http2.SecureClientSessionOptions = {},
  ) {
    const session = http2.connect(baseUrl, options);
    session.on("error", () => {});
    try {
      const first = stallHalfWay(session);
      await new Promise((r) => setTimeout(r, 150));
      const second = stallHalfWay(session);
      // The session serves other calls meanwhile, and after.
      const client = createClient(
        LLMService,
        createGrpcTransport({ baseUrl, nodeOptions: options }),
      );
      expect((await client.generate({ text: "meanwhile" })).reply).toBe("Echo: meanwhile");
      const ended = await first;
      expect(ended.rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
      expect(ended.ms).toBeGreaterThanOrEqual(280);
      expect(ended.ms).toBeLessThan(2_000);
      // The second stream is still waiting when close begins: it is
      // cancelled on its own time, and the server closes right after.
      const closing = app?.close().then(() => Date.now());
      app = undefined;
      const cancelled = await second;
      const cancelledAt = Date.now();
      expect(cancelled.rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
      const closedAt = await Promise.race([
        closing,
        new Promise<string>((r) => setTimeout(r, 3_000, "still open after 3 s")),
      ]);
      expect(typeof closedAt).toBe("number");
      expect((closedAt as number) - cancelledAt).toBeLessThan(1_000);
      expect(
        lines.filter((l) => l.msg === "HTTP/2 request not received in time: stream cancelled"),
      ).toMatchObject([
        { level: 40, path: "/chat.v1.LLMService/Generate", timeoutMs: 300 },
        { level: 40, path: "/chat.v1.LLMService/Generate", timeoutMs: 300 },
      ]);
    } finally {
      session.destroy();
    }
  }

  it("cancels a call whose request stops half way after REQUEST_TIMEOUT_MS, and still closes at once", async () => {
    const { logger, lines } = createMemoryLogger();
    const started = await startEchoLlmService(0, { REQUEST_TIMEOUT_MS: "300" }, logger);
    app = started.app;
    await cancelsStalledRequests(`http://127.0.0.1:${started.port}`, lines);
  });

  it.runIf(opensslOrSkip())("does the same over HTTP/2 with TLS", async () => {
    const certs = await makeTestCertificates();
    try {
      const { logger, lines } = createMemoryLogger();
      const started = await startEchoLlmService(
        0,
        { REQUEST_TIMEOUT_MS: "300", TLS_CERT_FILE: certs.certFile, TLS_KEY_FILE: certs.keyFile },
        logger,
      );
      app = started.app;
      await cancelsStalledRequests(`https://127.0.0.1:${started.port}`, lines, {
        ca: readFileSync(certs.caFile),
      });
    } finally {
      rmSync(certs.dir, { recursive: true, force: true });
    }
  });

  it("lets a reflection stream, whose request is a stream of messages, last past REQUEST_TIMEOUT_MS", async () => {
    const baseUrl = await start(0, { REQUEST_TIMEOUT_MS: "300" });
    const session = http2.connect(baseUrl);
    session.on("error", () => {});
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "content-type": "application/grpc",
        te: "trailers",
      });
      stream.on("error", () => {});
      const answers: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => answers.push(chunk));
      // ServerReflectionRequest{list_services: "*"}, framed.
      const listServices = Buffer.from([0, 0, 0, 0, 3, 0x3a, 1, 0x2a]);
      stream.write(listServices);
      await new Promise((r) => setTimeout(r, 700));
      stream.write(listServices);
      await new Promise((r) => setTimeout(r, 200));
      expect(stream.closed).toBe(false);
      expect(Buffer.concat(answers).toString("latin1").split("chat.v1.LLMService").length - 1).toBe(
        2,
      );
      stream.end();
    } finally {
      session.destroy();
    }
  });

  it("closes a session idle too long even with a stream whose request never ends", async () => {
    const server = http2.createServer(() => {});
    server.on("session", (session) => closeIdleHttp2Session(session, 200));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const session = http2.connect(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
    session.on("error", () => {});
    try {
      const stream = session.request({ ":method": "POST", ":path": "/never-ends" });
      stream.on("error", () => {});
      stream.write("part of a body");
      const started = Date.now();
      await new Promise((resolve) => session.once("close", resolve));
      // GOAWAY after 200 ms idle, then destroyed 200 ms later: the stream held it no longer.
      expect(Date.now() - started).toBeGreaterThanOrEqual(350);
    } finally {
      session.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe("telling the protocols apart", () => {
  it.each([
    ["its first byte", ["G", "ET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], 200],
    ["a byte both prefaces begin with", ["P", "OST /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], 404],
    // Node's HTTP/1.1 parser refuses these methods: its 400 shows where they went.
    [
      "bytes the HTTP/2 preface begins with",
      ["PR", "IX /healthz HTTP/1.1\r\nHost: x\r\n\r\n"],
      400,
    ],
    ["bytes the lean preface begins with", ["CM", "RPC /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], 400],
  ] as const)("answers HTTP/1.1 sent in pieces, cut after %s", async (_cut, parts, status) => {
    const baseUrl = await start();
    const answer = await splitWrites(Number(new URL(baseUrl).port), parts);
    expect(answer.toString("latin1")).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
  });

  it("answers HTTP/2 whose preface comes one byte at a time", async () => {
    const baseUrl = await start();
    const preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    const settings = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    const parts = [...preface].map((byte) => Buffer.from([byte]));
    const answer = await splitWrites(Number(new URL(baseUrl).port), [...parts, settings]);
    // The server's first frame: SETTINGS (type 4) on stream 0.
    expect(answer[3]).toBe(4);
    expect(answer.readUInt32BE(5)).toBe(0);
  });
});

describe("the authority of a call", () => {
  /** A Connect JSON call written on a new connection by hand: the whole answer. */
  function rawCall(port: number, version: string, host: string | undefined): Promise<string> {
    const body = '{"text":"hi"}';
    const head = [
      `POST /chat.v1.LLMService/Generate HTTP/${version}`,
      ...(host === undefined ? [] : [`Host: ${host}`]),
      "Content-Type: application/json",
      `Content-Length: ${body.length}`,
      "Connection: close",
    ];
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, "127.0.0.1", () =>
        socket.end(`${head.join("\r\n")}\r\n\r\n${body}`),
      );
      const chunks: Buffer[] = [];
      socket.on("data", (chunk: Buffer) => chunks.push(chunk));
      socket.on("error", reject);
      socket.on("close", () => resolve(Buffer.concat(chunks).toString()));
    });
  }

  it("serves a call without Host or with an empty one, and refuses a Host no URL can have with 400, not an empty 200", async () => {
    const port = Number(new URL(await start()).port);
    // HTTP/1.1 sends an empty Host for a target without an authority (RFC 9112, 3.2).
    expect(await rawCall(port, "1.1", "")).toMatch(/^HTTP\/1\.1 200 [\s\S]*"reply":"Echo: hi"/);
    expect(await rawCall(port, "1.0", undefined)).toMatch(
      /^HTTP\/1\.1 200 [\s\S]*"reply":"Echo: hi"/,
    );
    for (const host of ["a b", "[::1", "x:99999"]) {
      expect([host, (await rawCall(port, "1.1", host)).split("\r\n", 1)[0]]).toEqual([
        host,
        "HTTP/1.1 400 Bad Request",
      ]);
    }
    expect(await rawCall(port, "1.1", "[::1]:1")).toMatch(
      /^HTTP\/1\.1 200 [\s\S]*"reply":"Echo: hi"/,
    );
  });
});

describe("deadlines and encodings on every path", () => {
  const path = "/chat.v1.LLMService/Generate";
  const hi = toBinary(GenerateRequestSchema, create(GenerateRequestSchema, { text: "hi" }));
  const post = (baseUrl: string, headers: Record<string, string>, body: Uint8Array | string) =>
    fetch(`${baseUrl}${path}`, { method: "POST", headers, body });

  it("serves a call whose deadline is farther than a Node timer can wait (~24.8 days) as one without", async () => {
    const baseUrl = await start(300);
    // gRPC over HTTP/2 and Connect JSON reach the router; Connect binary over HTTP/1.1 the lean path.
    expect(await rawGrpc(baseUrl, path, hi, { "grpc-timeout": "99999999S" })).toBe("0");
    const far = { "connect-timeout-ms": "9999999999" };
    const json = await post(
      baseUrl,
      { "content-type": "application/json", ...far },
      '{"text":"hi"}',
    );
    expect([json.status, await json.json()]).toMatchObject([200, { reply: "Echo: hi" }]);
    const binary = await post(baseUrl, { "content-type": "application/proto", ...far }, hi);
    expect(binary.status).toBe(200);
    const reply = fromBinary(GenerateResponseSchema, new Uint8Array(await binary.arrayBuffer()));
    expect(reply.reply).toBe("Echo: hi");
    // A near deadline still ends the call.
    expect(await rawGrpc(baseUrl, path, hi, { "grpc-timeout": "50m" })).toBe("4");
  });

  it("decompresses a gzip Connect binary call over HTTP/1.1, and refuses an unknown coding, as over HTTP/2", async () => {
    const baseUrl = await start();
    const proto = { "content-type": "application/proto" };
    const gzip = await post(baseUrl, { ...proto, "content-encoding": "gzip" }, gzipSync(hi));
    expect(gzip.status).toBe(200);
    const reply = fromBinary(GenerateResponseSchema, new Uint8Array(await gzip.arrayBuffer()));
    expect(reply.reply).toBe("Echo: hi");
    const snappy = await post(baseUrl, { ...proto, "content-encoding": "snappy" }, hi);
    expect([snappy.status, ((await snappy.json()) as { code: string }).code]).toEqual([
      501,
      "unimplemented",
    ]);
  });

  it("fails a request message that is not valid protobuf with INTERNAL on the lean path, as the router does", async () => {
    const baseUrl = await start();
    const proto = { "content-type": "application/proto" };
    // A string field cut short; one with invalid UTF-8.
    for (const bad of [Buffer.from([0x0a, 0x05, 0x61]), Buffer.from([0x0a, 0x02, 0x61, 0xff])]) {
      const router = await h2Post(baseUrl, path, proto, bad);
      const lean = await post(baseUrl, proto, bad);
      expect([lean.status, await lean.text()]).toEqual([router.status, router.body]);
      expect([router.status, (JSON.parse(router.body) as { code: string }).code]).toEqual([
        500,
        "internal",
      ]);
    }
    // The lean path counts them as failed calls. (The router answers such a
    // request before its interceptors run: those two are not counted.)
    const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
    expect(metrics).toMatch(
      /^rpc_server_handled_total\{service="chat.v1.LLMService",method="Generate",code="internal"\} 2$/m,
    );
  });

  it("refuses a message over MAX_REQUEST_BYTES on the lean path with the router's words", async () => {
    const baseUrl = await start(0, { MAX_REQUEST_BYTES: "1024" });
    const proto = { "content-type": "application/proto" };
    const big = toBinary(
      GenerateRequestSchema,
      create(GenerateRequestSchema, { text: "x".repeat(2_000) }),
    );
    const router = await h2Post(baseUrl, path, { ...proto, "content-length": big.length }, big);
    const lean = await post(baseUrl, proto, big);
    expect([lean.status, await lean.text()]).toEqual([router.status, router.body]);
    expect(JSON.parse(router.body)).toEqual({
      code: "resource_exhausted",
      message: `message size ${big.length} is larger than configured readMaxBytes 1024`,
    });
  });

  it("compresses a large answer on the lean path as the router does, in the first coding the client accepts", async () => {
    const baseUrl = await start();
    const proto = { "content-type": "application/proto" };
    const long = toBinary(
      GenerateRequestSchema,
      create(GenerateRequestSchema, { text: "words ".repeat(400) }),
    );
    for (const [accept, message] of [
      ["gzip", long],
      ["br, gzip", long],
      ["deflate, gzip, br, zstd", long],
      ["zstd", long],
      ["gzip", hi],
    ] as const) {
      const headers = { ...proto, "accept-encoding": accept };
      const router = await h2Post(baseUrl, path, headers, message);
      const lean = await h1Post(baseUrl, path, headers, message);
      expect([accept, lean.status, lean.encoding, lean.bytes]).toEqual([
        accept,
        router.status,
        router.encoding,
        router.bytes,
      ]);
    }
  });

  it("fails a call whose connect-timeout-ms is 0 at once, as the router does", async () => {
    const baseUrl = await start(1_000);
    for (const timeout of ["0", "00"]) {
      const started = Date.now();
      const res = await post(
        baseUrl,
        { "content-type": "application/proto", "connect-timeout-ms": timeout },
        hi,
      );
      const body = (await res.json()) as { code: string };
      expect([res.status, body.code]).toEqual([504, "deadline_exceeded"]);
      expect(Date.now() - started).toBeLessThan(500);
    }
  });

  it("refuses a malformed connect-timeout-ms on the lean path as the router does", async () => {
    const baseUrl = await start();
    for (const timeout of ["abc", "-5", "1.5", "12345678901"]) {
      const res = await post(
        baseUrl,
        { "content-type": "application/proto", "connect-timeout-ms": timeout },
        hi,
      );
      expect([timeout, res.status]).toEqual([timeout, 400]);
    }
  });
});

describe("one trace per call on the router", () => {
  /** The LLM service answering with the trace its handler sees; log lines kept in memory. */
  async function startTracing() {
    const { logger, lines } = createMemoryLogger();
    app = await createRpcServer({
      name: "llm",
      config: loadLlmConfig({}),
      logger,
      routes: (router) =>
        router.service(LLMService, {
          generate: (_req, ctx) => {
            const trace = traceOf(ctx);
            return { reply: `${trace?.traceId} ${trace?.spanId} ${trace?.requestId}` };
          },
        }),
    });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const baseUrl = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
    return { baseUrl, lines };
  }

  it.each([
    ["gRPC over HTTP/2", (baseUrl: string) => createGrpcTransport({ baseUrl })],
    [
      "Connect JSON over HTTP/1.1",
      (baseUrl: string) =>
        createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false }),
    ],
  ])(
    "a call without traceparent (%s) has the trace of its request's log line",
    async (_how, transport) => {
      const { baseUrl, lines } = await startTracing();
      const client = createClient(LLMService, transport(baseUrl));
      const [traceId, spanId, requestId] = (await client.generate({ text: "hi" })).reply.split(" ");
      expect(traceId).toMatch(/^[0-9a-f]{32}$/);
      const logged = lines.filter((l) => l.msg === "request" && l.route !== "/healthz");
      expect(logged).toHaveLength(1);
      expect([logged[0]?.trace_id, logged[0]?.request_id]).toEqual([traceId, requestId]);
      // Each call without traceparent starts a trace of its own.
      const other = (await client.generate({ text: "again" })).reply.split(" ");
      expect(other[0]).not.toBe(traceId);
      expect(other[1]).not.toBe(spanId);
    },
  );
});
