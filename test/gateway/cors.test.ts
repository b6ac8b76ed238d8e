import net from "node:net";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { createApiKeys, parseApiKeys } from "../../src/gateway/auth.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

const appOrigin = "https://app.example.com";
const aliceKey = "alice-key-0123456789abcdef";

let app: FastifyInstance;
afterEach(() => app?.close());

async function gateway(env: Record<string, string>, withKeys = false) {
  app = await buildGateway({
    config: loadGatewayConfig(env),
    logger: createLogger("gateway", "silent"),
    upstreams: createInProcessUpstreams(),
    ...(withKeys ? { apiKeys: createApiKeys(parseApiKeys(`${aliceKey} alice\n`)) } : {}),
  });
}

/** A browser's preflight for a POST with a key and a JSON body. */
const preflight = (url: string, origin: string) =>
  app.inject({
    method: "OPTIONS",
    url,
    headers: {
      origin,
      "access-control-request-method": "POST",
      "access-control-request-headers": "authorization,content-type",
    },
  });

const chatFrom = (origin: string, key?: string) =>
  app.inject({
    method: "POST",
    url: "/chat",
    headers: { origin, ...(key === undefined ? {} : { authorization: `Bearer ${key}` }) },
    payload: { user_id: "alice", text: "hi" },
  });

/** Writes `bytes` to the listening gateway; the head of what it answered before closing. */
async function rawHead(bytes: string): Promise<string> {
  if (!app.server.listening) await app.listen({ host: "127.0.0.1", port: 0 });
  const port = (app.server.address() as net.AddressInfo).port;
  return new Promise((resolve, reject) => {
    let answer = "";
    const socket = net.connect(port, "127.0.0.1", () => socket.write(bytes));
    socket.on("data", (chunk) => {
      answer += chunk.toString("latin1");
    });
    socket.on("error", reject);
    socket.on("close", () => resolve(answer.split("\r\n\r\n")[0] ?? ""));
  });
}

describe("CORS_ORIGINS", () => {
  it("answers a listed origin's preflight before asking for a key, and lets its page read the answer", async () => {
    await gateway({ CORS_ORIGINS: `${appOrigin} http://localhost:5173` }, true);
    const pre = await preflight("/v1/chat/completions", appOrigin);
    expect(pre.statusCode).toBe(204);
    expect(pre.headers).toMatchObject({
      "access-control-allow-origin": appOrigin,
      "access-control-allow-methods": "GET, HEAD, POST",
      "access-control-allow-headers": "authorization,content-type",
      "access-control-max-age": "600",
      "x-request-id": expect.any(String),
    });
    expect(pre.headers.vary).toMatch(/origin/i);

    const answered = await chatFrom(appOrigin, aliceKey);
    expect(answered.statusCode).toBe(200);
    expect(answered.headers["access-control-allow-origin"]).toBe(appOrigin);
    expect(String(answered.headers["access-control-expose-headers"]).split(", ")).toEqual(
      expect.arrayContaining(["x-request-id", "retry-after", "ratelimit-remaining"]),
    );
    // A refusal is readable too: the page can tell the user why.
    const refused = await chatFrom(appOrigin);
    expect(refused.statusCode).toBe(401);
    expect(refused.headers["access-control-allow-origin"]).toBe(appOrigin);
  });

  it("lets a page's OpenAI SDK read that a spent quota is not to be retried", async () => {
    await gateway({ CORS_ORIGINS: appOrigin }, true);
    const completion = () =>
      app.inject({
        method: "POST",
        url: "/v1/chat/completions",
        headers: { origin: appOrigin, authorization: `Bearer ${aliceKey}` },
        payload: { model: "echo", messages: [{ role: "user", content: "hi" }] },
      });
    for (let i = 0; i < 4; i++) expect((await completion()).statusCode).toBe(200);
    const spent = await completion();
    expect(spent.statusCode).toBe(429);
    expect(spent.headers["x-should-retry"]).toBe("false");
    expect(String(spent.headers["access-control-expose-headers"]).split(", ")).toContain(
      "x-should-retry",
    );
  });

  it("lets a listed origin's page read refusals made before routing, and no other page", async () => {
    await gateway({ CORS_ORIGINS: appOrigin, REQUEST_TIMEOUT_MS: "300" });
    const big = (origin: string) =>
      rawHead(
        `POST /chat HTTP/1.1\r\nHost: x\r\nOrigin: ${origin}\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`,
      );
    const tooLarge = await big(appOrigin);
    expect(tooLarge.split("\r\n")[0]).toBe("HTTP/1.1 431 Request Header Fields Too Large");
    expect(tooLarge).toContain(`\r\naccess-control-allow-origin: ${appOrigin}\r\n`);
    expect(tooLarge).toMatch(/\r\naccess-control-expose-headers: x-request-id, /);
    expect(await big("https://evil.example.com")).not.toMatch(/access-control-allow-origin/);
    await app.close();

    await gateway({ CORS_ORIGINS: appOrigin, REQUEST_TIMEOUT_MS: "300" });
    const slow = await rawHead(
      `POST /chat HTTP/1.1\r\nHost: x\r\nOrigin: ${appOrigin}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{`,
    );
    expect(slow.split("\r\n")[0]).toBe("HTTP/1.1 408 Request Timeout");
    expect(slow).toContain(`\r\naccess-control-allow-origin: ${appOrigin}\r\n`);

    const badPath = await app.inject({
      method: "GET",
      url: "/chat/%C0",
      headers: { origin: appOrigin },
    });
    expect(badPath.statusCode).toBe(400);
    expect(badPath.headers["access-control-allow-origin"]).toBe(appOrigin);
  });

  it("gives an origin not listed nothing that lets its page read an answer", async () => {
    await gateway({ CORS_ORIGINS: appOrigin });
    const pre = await preflight("/chat", "https://evil.example.com");
    expect(pre.headers["access-control-allow-origin"]).toBeUndefined();
    const answered = await chatFrom("https://evil.example.com");
    expect(answered.statusCode).toBe(200);
    expect(answered.headers["access-control-allow-origin"]).toBeUndefined();
  });

  it("lets any origin in with *", async () => {
    await gateway({ CORS_ORIGINS: "*" });
    expect((await preflight("/chat", "http://anywhere.test")).headers).toMatchObject({
      "access-control-allow-origin": "*",
    });
    expect((await chatFrom("http://anywhere.test")).headers).toMatchObject({
      "access-control-allow-origin": "*",
    });
  });

  it("keeps 404 for an unknown path and names OPTIONS in a 405's Allow", async () => {
    await gateway({ CORS_ORIGINS: appOrigin });
    const unknown = await app.inject({ method: "GET", url: "/nowhere" });
    expect(unknown.statusCode).toBe(404);
    const wrongMethod = await app.inject({ method: "GET", url: "/chat" });
    expect(wrongMethod.statusCode).toBe(405);
    expect(wrongMethod.headers.allow).toBe("POST, OPTIONS");
  });

  it("is off by default: no CORS header, no preflight answered", async () => {
    await gateway({});
    const pre = await preflight("/chat", appOrigin);
    expect(pre.statusCode).toBe(405);
    expect(pre.headers.allow).toBe("POST");
    expect(pre.headers["access-control-allow-origin"]).toBeUndefined();
    expect((await chatFrom(appOrigin)).headers["access-control-allow-origin"]).toBeUndefined();
  });

  it("refuses an origin a browser would never send, naming the variable", () => {
    for (const bad of [
      "https://app.example.com/",
      "https://App.example.com",
      "app.example.com",
      "https://app.example.com:443",
      "ftp://files.example.com",
      "https://a.example.com,https://b.example.com/path",
    ]) {
      expect(() => loadGatewayConfig({ CORS_ORIGINS: bad }), bad).toThrow(
        /^CORS_ORIGINS must be \* or origins such as https:\/\/app\.example\.com/,
      );
    }
    expect(
      loadGatewayConfig({ CORS_ORIGINS: " https://a.example.com, http://127.0.0.1:3000 " })
        .corsOrigins,
    ).toEqual(["https://a.example.com", "http://127.0.0.1:3000"]);
    expect(loadGatewayConfig({}).corsOrigins).toEqual([]);
  });
});
