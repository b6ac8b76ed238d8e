import { readFileSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import net from "node:net";
import tls from "node:tls";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it, vi } from "vitest";
import { LLMService } from "../../gen/chat/v1/llm_pb.js";
import { buildGateway } from "../../src/gateway/app.js";
import { loadGatewayConfig, loadLlmConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createRpcServer } from "../../src/lib/rpc-server.js";
import { createEchoBackend } from "../../src/services/llm/echo-backend.js";
import { createLlmService } from "../../src/services/llm/llm-service.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { freePort } from "../fixtures/processes.js";
import { startEchoLlmService } from "../fixtures/rpc.js";
import { makeTestCertificates, opensslOrSkip } from "../fixtures/tls.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

const env = { REQUEST_TIMEOUT_MS: "600" };
const tlsEnabled = opensslOrSkip();
let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

const portOf = (a: FastifyInstance) => (a.server.address() as AddressInfo).port;

async function llmService(delayMs = 0): Promise<number> {
  const started = await startEchoLlmService(delayMs, env);
  app = started.app;
  return started.port;
}

async function gateway(llmDelayMs = 0): Promise<number> {
  app = await buildGateway({
    config: loadGatewayConfig(env),
    logger: createLogger("gateway", "silent"),
    upstreams: createInProcessUpstreams({ llm: createEchoBackend({ chunkDelayMs: llmDelayMs }) }),
  });
  await app.listen({ host: "127.0.0.1", port: 0 });
  return portOf(app);
}

/** Opens a connection to `port` and calls `onConnect` once it is open. */
type Connect = (port: number, onConnect: () => void) => net.Socket;
const plain: Connect = (port, onConnect) => net.connect(port, "127.0.0.1", onConnect);
/** Over TLS, trusting `caFile`, with ALPN http/1.1. */
const overTls =
  (caFile: string): Connect =>
  (port, onConnect) =>
    tls.connect(
      { port, host: "127.0.0.1", ca: readFileSync(caFile), ALPNProtocols: ["http/1.1"] },
      onConnect,
    );

/**
 * Sends `head` at once, then one byte of `drip` every 150 ms, for ever (or
 * nothing at all, when both are empty);
 * resolves with what came back and when the server closed the connection
 * (or "still open" after 5 s).
 */
function slowClient(port: number, head: string, drip: string, connect = plain) {
  return new Promise<{ answer: string; ms: number }>((resolve) => {
    const started = Date.now();
    let answer = "";
    const socket = connect(port, () => {
      if (head !== "") socket.write(head);
    });
    let i = 0;
    const dripping = setInterval(() => {
      if (!socket.destroyed && drip !== "") socket.write(drip[i++ % drip.length] as string);
    }, 150);
    const done = (result: string) => {
      clearInterval(dripping);
      clearTimeout(giveUp);
      socket.destroy();
      resolve({ answer: result, ms: Date.now() - started });
    };
    const giveUp = setTimeout(() => done("still open"), 5_000);
    socket.on("data", (chunk) => {
      answer += chunk.toString("latin1");
    });
    socket.on("error", () => {});
    socket.on("close", () => done(answer.split("\r\n")[0] ?? ""));
  });
}

const silent = (port: number) => slowClient(port, "", "");
const slowHeaders = (port: number, connect = plain) =>
  slowClient(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n", "X-Slow: a\r\n", connect);
const slowBody = (port: number, path: string) =>
  slowClient(
    port,
    `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{`,
    " ",
  );

describe("REQUEST_TIMEOUT_MS: a client that sends a byte now and then", () => {
  it("gets 408 from the gateway when its headers or its body are slower than that", async () => {
    const port = await gateway();
    for (const client of [slowHeaders(port), slowBody(port, "/chat")]) {
      const { answer, ms } = await client;
      expect(answer).toBe("HTTP/1.1 408 Request Timeout");
      expect(ms).toBeGreaterThanOrEqual(600);
      expect(ms).toBeLessThan(2_500);
    }
  });

  it("is closed, by the gateway and by a service, when it sends nothing at all for that long", async () => {
    // The gateway's Node server answers 408; a service closes a connection
    // before its first byte says which protocol it speaks.
    for (const [start, expected] of [
      [gateway, "HTTP/1.1 408 Request Timeout"],
      [llmService, ""],
    ] as const) {
      const { answer, ms } = await silent(await start());
      expect(answer).toBe(expected);
      expect(ms).toBeGreaterThanOrEqual(550);
      expect(ms).toBeLessThan(2_500);
      await app?.close();
      app = undefined;
    }
  });

  it("is closed by a service when its first bytes do not yet tell the protocol, and no more come", async () => {
    // "P" may become the HTTP/2 preface or an HTTP/1.1 POST: the service waits for more.
    const { answer, ms } = await slowClient(await llmService(), "P", "");
    expect(answer).toBe("");
    expect(ms).toBeGreaterThanOrEqual(550);
    expect(ms).toBeLessThan(2_500);
  });

  it("is closed by a service when its preface comes a byte at a time: the time is counted from the start", async () => {
    // 15 bytes at 150 ms each take 2.1 s: far past the 600 ms the protocol must be told in.
    const { answer, ms } = await slowClient(await llmService(), "", "PRI * HTTP/2.0\r");
    expect(answer).toBe("");
    expect(ms).toBeLessThan(1_500);
  });

  it("gets 408 from a service's HTTP/1.1, which is handed its connections", async () => {
    const port = await llmService();
    const path = "/chat.v1.LLMService/Generate";
    for (const client of [slowHeaders(port), slowBody(port, path)]) {
      const { answer, ms } = await client;
      expect(answer).toBe("HTTP/1.1 408 Request Timeout");
      expect(ms).toBeLessThan(2_500);
    }
  });

  it.runIf(tlsEnabled)(
    "gets 408 from a TLS service's HTTP/1.1, and is dropped if its handshake is too slow",
    async () => {
      const certs = await makeTestCertificates();
      try {
        const started = await startEchoLlmService(0, {
          ...env,
          TLS_CERT_FILE: certs.certFile,
          TLS_KEY_FILE: certs.keyFile,
        });
        app = started.app;
        const { answer, ms } = await slowHeaders(started.port, overTls(certs.caFile));
        expect(answer).toBe("HTTP/1.1 408 Request Timeout");
        expect(ms).toBeLessThan(2_500);
        // A client that opens TCP and never says hello.
        const silence = await silent(started.port);
        expect(silence.answer).toBe("");
        expect(silence.ms).toBeLessThan(2_500);
      } finally {
        rmSync(certs.dir, { recursive: true, force: true });
      }
    },
  );

  it("leaves an answer that takes longer than that alone: only the request is timed", async () => {
    const port = await llmService(1_200);
    const client = createClient(
      LLMService,
      createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }),
    );
    expect((await client.generate({ text: "slow" })).reply).toBe("Echo: slow");
  });

  it("leaves the gateway's event streams alone however long they last", async () => {
    const port = await gateway(200);
    const started = Date.now();
    const res = await fetch(`http://127.0.0.1:${port}/chat/stream`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "s", text: "one two three four five" }),
    });
    const events = await res.text();
    expect(Date.now() - started).toBeGreaterThan(1_000);
    expect(events).toContain(
      'event: done\ndata: {"reply":"Echo: one two three four five","remaining":150}',
    );
  });
});

describe("a request cut off by REQUEST_TIMEOUT_MS", () => {
  /** The HTTP request counts of the app on `port`, once its /metrics has them. */
  const requestCounts = async (port: number) => {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return text.split("\n").filter((line) => line.startsWith("http_requests_total{"));
  };

  it.each([
    ["the gateway", "/chat"],
    ["a service", "/chat.v1.LLMService/Generate"],
  ])(
    "is logged and counted by %s with the 408 it was answered, not as a client gone (499)",
    async (_, path) => {
      const { logger, lines } = createMemoryLogger();
      app =
        path === "/chat"
          ? await buildGateway({
              config: loadGatewayConfig(env),
              logger,
              upstreams: createInProcessUpstreams(),
            })
          : await createRpcServer({
              name: "llm",
              config: loadLlmConfig(env),
              logger,
              routes: (router) =>
                router.service(LLMService, createLlmService({ backend: createEchoBackend() })),
            });
      const port = await freePort();
      await app.listen({ host: "127.0.0.1", port });
      expect((await slowBody(port, path)).answer).toBe("HTTP/1.1 408 Request Timeout");
      await vi.waitFor(async () =>
        expect(await requestCounts(port)).toContain(
          `http_requests_total{method="POST",route="${path}",status="408"} 1`,
        ),
      );
      expect((await requestCounts(port)).join("\n")).not.toContain('status="499"');
      expect(lines.filter((l) => l.route === path).map((l) => l.status)).toEqual([408]);
    },
  );
});

describe("the gateway's 408 to a request too slow for REQUEST_TIMEOUT_MS", () => {
  it("carries the request id the request is logged with", async () => {
    const { logger, lines } = createMemoryLogger();
    app = await buildGateway({
      config: loadGatewayConfig(env),
      logger,
      upstreams: createInProcessUpstreams(),
    });
    const port = await freePort();
    await app.listen({ host: "127.0.0.1", port });
    const answer = await new Promise<string>((resolve) => {
      let got = "";
      const socket = net.connect(port, "127.0.0.1", () =>
        socket.write(
          "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        ),
      );
      socket.on("data", (chunk) => {
        got += chunk.toString("latin1");
      });
      socket.on("error", () => {});
      socket.on("close", () => resolve(got));
    });
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    const sent = /\r\nx-request-id: ([^\r]+)\r\n/.exec(answer)?.[1];
    await vi.waitFor(() => expect(lines.filter((l) => l.route === "/chat")).toHaveLength(1));
    expect(lines.find((l) => l.route === "/chat")?.request_id).toBe(sent);
  });
});
