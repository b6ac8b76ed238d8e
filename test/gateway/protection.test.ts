import net from "node:net";
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { bearerKey, createApiKeys, parseApiKeys } from "../../src/gateway/auth.js";
import {
  ConfigError,
  loadFilterConfig,
  loadGatewayConfig,
  loadHistoryConfig,
  loadLlmConfig,
  loadTokenConfig,
} from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

const aliceKey = "alice-key-0123456789abcdef";
const bobKey = "bob-key-0123456789abcdef00";
const keys = createApiKeys(parseApiKeys(`# test keys\n${aliceKey} alice\n\n  ${bobKey}\tbob  \n`));

let app: FastifyInstance;
afterEach(() => app?.close());

async function gateway(env: Record<string, string> = {}, withKeys = false) {
  app = await buildGateway({
    config: loadGatewayConfig(env),
    logger: createLogger("gateway", "silent"),
    upstreams: createInProcessUpstreams(),
    ...(withKeys ? { apiKeys: keys } : {}),
  });
  return app;
}

const chat = (payload: object, key?: string, remoteAddress = "127.0.0.1") =>
  app.inject({
    method: "POST",
    url: "/chat",
    remoteAddress,
    headers: key === undefined ? {} : { authorization: `Bearer ${key}` },
    payload,
  });
const get = (url: string, key?: string) =>
  app.inject({
    method: "GET",
    url,
    headers: key === undefined ? {} : { authorization: `Bearer ${key}` },
  });

describe("security headers", () => {
  const hsts = "max-age=31536000; includeSubDomains";
  /** OWASP's set for API answers, but Cache-Control (an event stream has its own). */
  const apiHeaders = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "strict-transport-security": hsts,
  };

  it("are OWASP's API set on every answer: chats, refusals, health checks, metrics", async () => {
    await gateway({}, true);
    const responses = [
      await chat({ user_id: "alice", text: "hi" }, aliceKey),
      await chat({ text: "hi" }),
      await app.inject({
        method: "POST",
        url: "/chat",
        payload: "x",
        headers: { "content-type": "text/plain", authorization: `Bearer ${aliceKey}` },
      }),
      await get("/healthz"),
      await get("/metrics"),
      await get("/nowhere", aliceKey),
    ];
    expect(responses.map((r) => r.statusCode)).toEqual([200, 401, 415, 200, 200, 404]);
    for (const res of responses) {
      expect(res.headers).toMatchObject({ ...apiHeaders, "cache-control": "no-store" });
      // A document's headers are not an API answer's.
      for (const name of ["referrer-policy", "cross-origin-opener-policy", "x-powered-by"]) {
        expect(res.headers).not.toHaveProperty(name);
      }
    }
  });

  it("are helmet's document set on the chat page's files", async () => {
    await gateway({}, true);
    for (const url of ["/", "/chat.js", "/chat.css", "/favicon.svg"]) {
      const res = await get(url);
      expect(res.statusCode).toBe(200);
      expect(res.headers).toMatchObject({
        "content-security-policy":
          "default-src 'self';script-src 'self';style-src 'self';img-src 'self' data:;connect-src 'self';object-src 'none';base-uri 'none';form-action 'self';frame-ancestors 'none'",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "strict-transport-security": hsts,
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
        "cross-origin-resource-policy": "same-origin",
        // Revalidated before use, so a new page reaches browsers at once.
        "cache-control": "no-cache",
      });
      expect(res.headers).not.toHaveProperty("x-powered-by");
    }
  });

  it("keep an event stream's own Cache-Control", async () => {
    await gateway({}, true);
    const res = await app.inject({
      method: "POST",
      url: "/chat/stream",
      headers: { authorization: `Bearer ${aliceKey}` },
      payload: { text: "hi" },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers).toMatchObject({
      ...apiHeaders,
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
    });
  });
});

describe("API keys", () => {
  it("refuse a request without a valid key with 401, and let health checks and metrics through", async () => {
    await gateway({}, true);
    for (const authorization of [
      undefined,
      "Bearer nope",
      `Basic ${aliceKey}`,
      `Bearer ${aliceKey}x`,
      `Bearer`,
    ]) {
      const res = await app.inject({
        method: "POST",
        url: "/chat",
        headers: authorization === undefined ? {} : { authorization },
        payload: { user_id: "alice", text: "hi" },
      });
      expect([res.statusCode, res.json()]).toEqual([401, { error: "invalid api key" }]);
      expect(res.headers["www-authenticate"]).toBe('Bearer realm="chatmesh"');
      expect(res.headers["x-request-id"]).toBeDefined();
    }
    expect((await get("/quota?user_id=alice")).statusCode).toBe(401);
    expect((await get("/history?user_id=alice")).statusCode).toBe(401);
    for (const path of ["/health", "/healthz", "/metrics"]) {
      expect((await get(path)).statusCode).toBe(200);
    }
  });

  it("make the key's user the user: named or left out, never anyone else", async () => {
    await gateway({}, true);
    const mine = await chat({ user_id: "alice", text: "mine" }, aliceKey);
    expect([mine.statusCode, mine.json().remaining]).toEqual([200, 150]);
    const implied = await chat({ text: "implied" }, aliceKey);
    expect([implied.statusCode, implied.json().remaining]).toEqual([200, 100]);
    const other = await chat({ user_id: "bob", text: "spend bob's" }, aliceKey);
    expect([other.statusCode, other.json()]).toEqual([
      400,
      { error: "user_id does not match the api key" },
    ]);
    // Bob's quota is untouched; alice's shows both chats.
    expect((await get("/quota", bobKey)).json()).toMatchObject({ user_id: "bob", used: 0 });
    expect((await get("/quota?user_id=alice", aliceKey)).json()).toMatchObject({ used: 100 });
    expect((await get("/quota?user_id=alice", bobKey)).statusCode).toBe(400);
    expect((await get("/history?user_id=alice", bobKey)).json()).toEqual({
      error: "user_id does not match the api key",
    });
    expect((await get("/history?page_size=5", bobKey)).json()).toEqual({
      items: [],
      next_page_token: "",
    });
  });

  it("refuse a user_id that is empty or no string in the contract's words, keys or not", async () => {
    await gateway({}, true);
    for (const user_id of ["", 5, null, ["alice"]]) {
      const res = await chat({ user_id, text: "hi" }, aliceKey);
      expect([res.statusCode, res.json()], JSON.stringify(user_id)).toEqual([
        400,
        { error: "bad json or missing user_id" },
      ]);
    }
    expect((await get("/history?user_id=", aliceKey)).json()).toEqual({
      error: "user_id is required",
    });
  });

  it("are parsed strictly, matched exactly, and read from the Authorization header", () => {
    expect(keys.size).toBe(2);
    expect(keys.userOf(aliceKey)).toBe("alice");
    expect(keys.userOf(bobKey)).toBe("bob");
    expect(keys.userOf(aliceKey.slice(0, -1))).toBeUndefined();
    expect(keys.userOf("")).toBeUndefined();
    expect(bearerKey(`bearer   ${aliceKey}`)).toBe(aliceKey);
    expect(bearerKey(`Bearer ${aliceKey} extra`)).toBeUndefined();
    expect(bearerKey(undefined)).toBeUndefined();
    expect(() => parseApiKeys("only-one-field-here-000")).toThrow(/^API_KEYS_FILE line 1 must be/);
    expect(() => parseApiKeys("# c\nshort u1")).toThrow(
      /^API_KEYS_FILE line 2: a key must have at least 16/,
    );
    expect(() => parseApiKeys(`${aliceKey} a\n${aliceKey} b`)).toThrow(
      /line 2: the key is given twice/,
    );
    expect(() => parseApiKeys("# nothing")).toThrow(ConfigError);
    // Keys a client could never send, users who could never chat: refused at start-up.
    expect(() => parseApiKeys("ключ-ключ-ключ-ключ carol")).toThrow(
      /^API_KEYS_FILE line 1: a key must be printable ASCII characters only$/,
    );
    expect(() => parseApiKeys(`${aliceKey} ${"u".repeat(257)}`)).toThrow(
      /^API_KEYS_FILE line 1: a user id must have at most 256 characters$/,
    );
    expect(parseApiKeys(`${aliceKey} ${"😀".repeat(256)}`)).toHaveLength(1);
  });
});

describe("rate limit", () => {
  it("is off by default", async () => {
    await gateway();
    for (let i = 0; i < 60; i++) {
      expect((await chat({ user_id: `u${i}`, text: "hi" })).statusCode).toBe(200);
    }
  });

  it("refuses the request over RATE_LIMIT_PER_MINUTE with 429 rate limited and Retry-After, apart from the quota's 429", async () => {
    await gateway({ RATE_LIMIT_PER_MINUTE: "6" });
    const statuses = [];
    for (let i = 0; i < 5; i++)
      statuses.push((await chat({ user_id: "q", text: "hi" })).statusCode);
    // The quota's 429 (the fifth chat of a day) is not the rate limiter's.
    const quota = await chat({ user_id: "q", text: "hi" });
    expect(statuses).toEqual([200, 200, 200, 200, 429]);
    expect(quota.json()).toEqual({ error: "quota exceeded", remaining: -50 });
    const limited = await chat({ user_id: "other", text: "hi" });
    expect([limited.statusCode, limited.json()]).toEqual([429, { error: "rate limited" }]);
    expect(Number(limited.headers["retry-after"])).toBeGreaterThan(0);
    expect(Number(limited.headers["retry-after"])).toBeLessThanOrEqual(60);
    expect(limited.headers["ratelimit-remaining"]).toBeUndefined();
    expect(limited.headers["x-request-id"]).toBeDefined();
    expect(limited.headers["content-security-policy"]).toBeDefined();
    // Per client: another address still gets through; health checks are never limited.
    expect((await chat({ user_id: "other", text: "hi" }, undefined, "10.0.0.2")).statusCode).toBe(
      200,
    );
    expect((await get("/healthz")).statusCode).toBe(200);
    expect((await get("/metrics")).statusCode).toBe(200);
    // Nor are the chat page's files: a browser's icon request takes no chat's place.
    expect((await get("/favicon.svg")).statusCode).toBe(200);
  });

  it("counts an IPv6 client by its /64: a new address for each request gets no new budget", async () => {
    await gateway({ RATE_LIMIT_PER_MINUTE: "2" });
    const from = async (address: string) =>
      (await chat({ user_id: `v6-${address}`, text: "hi" }, undefined, address)).statusCode;
    expect(await from("2001:db8:1:2::1")).toBe(200);
    expect(await from("2001:db8:1:2::2")).toBe(200);
    expect(await from("2001:db8:1:2:aaaa:bbbb:cccc:dddd")).toBe(429);
    // Another /64 is another client; an IPv4-mapped address is its IPv4 address.
    expect(await from("2001:db8:1:3::1")).toBe(200);
    expect(await from("10.0.0.9")).toBe(200);
    expect(await from("::ffff:10.0.0.9")).toBe(200);
    expect(await from("10.0.0.9")).toBe(429);
  });

  it("counts the client X-Forwarded-For names when the request comes from a TRUST_PROXY proxy, and ignores the header from anyone else", async () => {
    await gateway({ RATE_LIMIT_PER_MINUTE: "2", TRUST_PROXY: "10.0.0.0/8, ::1" });
    const via = async (proxy: string, forwardedFor: string, i: number) =>
      (
        await app.inject({
          method: "POST",
          url: "/chat",
          remoteAddress: proxy,
          headers: { "x-forwarded-for": forwardedFor },
          payload: { user_id: `xff${i}`, text: "hi" },
        })
      ).statusCode;
    // Two clients behind one proxy: a budget each, not one between them.
    expect(await via("10.1.2.3", "198.51.100.7", 1)).toBe(200);
    expect(await via("10.1.2.3", "198.51.100.7", 2)).toBe(200);
    expect(await via("10.1.2.3", "198.51.100.8", 3)).toBe(200);
    expect(await via("::1", "198.51.100.7", 4)).toBe(429);
    // The client is the last address not a trusted proxy: one the client
    // wrote in front of the proxy's own does not give it a new budget.
    expect(await via("10.1.2.3", "203.0.113.1, 198.51.100.7, 10.9.9.9", 5)).toBe(429);
    // From an address that is no trusted proxy, the header is the client's own words.
    expect(await via("192.0.2.1", "198.51.100.20", 6)).toBe(200);
    expect(await via("192.0.2.1", "198.51.100.21", 7)).toBe(200);
    expect(await via("192.0.2.1", "198.51.100.22", 8)).toBe(429);
    // What a proxy passes on that is no address is a client of its own, not a failure.
    expect(await via("10.1.2.3", "not-an-address, ", 9)).toBe(200);
  });

  it("refuses a TRUST_PROXY entry that is no address, range or range name, naming the variable", () => {
    for (const bad of [
      "10.0.0.0/33",
      "::1/129",
      "proxy.internal",
      "10.0.0.1/8/8",
      "true",
      "2",
      "10.0.0/8",
    ]) {
      expect(() => loadGatewayConfig({ TRUST_PROXY: bad }), bad).toThrow(
        new RegExp(`^TRUST_PROXY must be addresses or CIDR ranges .*got "${bad}"$`),
      );
    }
    expect(
      loadGatewayConfig({ TRUST_PROXY: " 10.0.0.0/8,fd00::/8  loopback " }).trustProxy,
    ).toEqual(["10.0.0.0/8", "fd00::/8", "loopback"]);
    expect(loadGatewayConfig({ TRUST_PROXY: " " }).trustProxy).toEqual([]);
  });

  it("ignores X-Forwarded-For without TRUST_PROXY", async () => {
    await gateway({ RATE_LIMIT_PER_MINUTE: "2" });
    const forged = async (forwardedFor: string, i: number) =>
      (
        await app.inject({
          method: "POST",
          url: "/chat",
          remoteAddress: "127.0.0.1",
          headers: { "x-forwarded-for": forwardedFor },
          payload: { user_id: `forged${i}`, text: "hi" },
        })
      ).statusCode;
    expect([await forged("198.51.100.1", 1), await forged("198.51.100.2", 2)]).toEqual([200, 200]);
    expect(await forged("198.51.100.3", 3)).toBe(429);
  });

  it("counts per API key user when keys are configured", async () => {
    await gateway({ RATE_LIMIT_PER_MINUTE: "2" }, true);
    expect((await chat({ text: "1" }, aliceKey)).statusCode).toBe(200);
    expect((await get("/quota", aliceKey)).statusCode).toBe(200);
    expect((await chat({ text: "3" }, aliceKey)).json()).toEqual({ error: "rate limited" });
    // Same address, another user: a budget of its own.
    expect((await chat({ text: "1" }, bobKey)).statusCode).toBe(200);
  });

  it("counts requests without a valid key per address, so keys cannot be guessed at full speed", async () => {
    await gateway({ RATE_LIMIT_PER_MINUTE: "3" }, true);
    const guesses = [];
    for (const key of [
      "wrong-key-0123456789abc",
      undefined,
      "wrong-key-0123456789abd",
      `${aliceKey}x`,
    ]) {
      guesses.push(await chat({ text: "hi" }, key, "10.0.0.7"));
    }
    expect(guesses.map((r) => r.statusCode)).toEqual([401, 401, 401, 429]);
    expect(guesses[3]?.json()).toEqual({ error: "rate limited" });
    expect(Number(guesses[3]?.headers["retry-after"])).toBeGreaterThan(0);
    // The right key from that address still works: its user has a budget of its own.
    expect((await chat({ text: "hi" }, aliceKey, "10.0.0.7")).statusCode).toBe(200);
    // Nor can they be told apart on an unknown path (404 with a valid key, 401 without).
    const unknown = await app.inject({
      method: "GET",
      url: "/nope",
      remoteAddress: "10.0.0.7",
      headers: { authorization: "Bearer wrong-key-0123456789abe" },
    });
    expect(unknown.statusCode).toBe(429);
    // Nor with a body the gateway would refuse anyway: the key is checked first.
    const gzipped = await app.inject({
      method: "POST",
      url: "/chat",
      remoteAddress: "10.0.0.9",
      headers: { "content-type": "application/json", "content-encoding": "gzip" },
      payload: "{}",
    });
    expect(gzipped.statusCode).toBe(401);
    // Another address guessing is not held back by the first one.
    expect((await chat({ text: "hi" }, "wrong-key-0123456789abc", "10.0.0.8")).statusCode).toBe(
      401,
    );
  });
});

describe("locked-down configuration", () => {
  it("binds every process to loopback unless HOST says otherwise", () => {
    for (const load of [
      loadGatewayConfig,
      loadFilterConfig,
      loadTokenConfig,
      loadLlmConfig,
      loadHistoryConfig,
    ]) {
      expect(load({}).host).toBe("127.0.0.1");
      expect(load({ HOST: "0.0.0.0" }).host).toBe("0.0.0.0");
    }
  });

  it("reads the protection variables, naming a bad one", () => {
    expect(loadGatewayConfig({})).toMatchObject({
      rateLimitPerMinute: 0,
      apiKeysFile: undefined,
      upstreamCaFile: undefined,
      tls: undefined,
    });
    expect(
      loadGatewayConfig({
        RATE_LIMIT_PER_MINUTE: "120",
        API_KEYS_FILE: "/etc/keys",
        TLS_CERT_FILE: "c.pem",
        TLS_KEY_FILE: "k.pem",
        UPSTREAM_CA_FILE: "ca.pem",
      }),
    ).toMatchObject({
      rateLimitPerMinute: 120,
      apiKeysFile: "/etc/keys",
      tls: { certFile: "c.pem", keyFile: "k.pem" },
      upstreamCaFile: "ca.pem",
    });
    expect(() => loadGatewayConfig({ RATE_LIMIT_PER_MINUTE: "-1" })).toThrow(
      /^RATE_LIMIT_PER_MINUTE must be an integer from 0 to/,
    );
    expect(() => loadLlmConfig({ TLS_CERT_FILE: "c.pem" })).toThrow(
      "TLS_KEY_FILE must be set too: TLS_CERT_FILE and TLS_KEY_FILE go together",
    );
  });
});

describe("the OpenAI-compatible API with API keys", () => {
  const completion = (key: string | undefined, user?: string) =>
    app.inject({
      method: "POST",
      url: "/v1/chat/completions",
      headers: key === undefined ? {} : { authorization: `Bearer ${key}` },
      payload: {
        model: "echo",
        messages: [{ role: "user", content: "hi" }],
        ...(user === undefined ? {} : { user }),
      },
    });

  it("charges the key's user, with or without a matching `user` field", async () => {
    await gateway({}, true);
    expect((await completion(aliceKey)).statusCode).toBe(200);
    expect((await completion(aliceKey, "alice")).statusCode).toBe(200);
    const quota = await get("/quota", aliceKey);
    expect(quota.json()).toMatchObject({ user_id: "alice", used: 100 });
    expect((await get("/quota", bobKey)).json()).toMatchObject({ user_id: "bob", used: 0 });
  });

  it("refuses a `user` naming someone else, and a call without a key, in OpenAI's error shape", async () => {
    await gateway({}, true);
    const other = await completion(aliceKey, "bob");
    expect(other.statusCode).toBe(400);
    expect(other.json()).toMatchObject({ error: { message: expect.any(String) } });
    const anonymous = await completion(undefined, "alice");
    expect(anonymous.statusCode).toBe(401);
    expect(anonymous.json()).toMatchObject({ error: { message: expect.any(String) } });
    expect((await get("/quota", bobKey)).json()).toMatchObject({ used: 0 });
  });
});

/** Sends raw bytes to the gateway; resolves with all it answered before closing. */
async function raw(bytes: string): Promise<{ head: string; body: string }> {
  const address = await app.listen({ host: "127.0.0.1", port: 0 });
  const port = Number(new URL(address).port);
  return new Promise((resolve, reject) => {
    let answer = "";
    const socket = net.connect(port, "127.0.0.1", () => socket.end(bytes));
    socket.on("data", (chunk) => {
      answer += chunk.toString("latin1");
    });
    socket.on("error", reject);
    socket.on("close", () => {
      const [head = "", body = ""] = answer.split("\r\n\r\n");
      resolve({ head, body });
    });
  });
}

describe("an HTTP/1.1 request without Host", () => {
  it.each([
    ["/healthz", { error: "Host header is required" }],
    ["/chat", { error: "Host header is required" }],
    [
      "/v1/models",
      {
        error: {
          message: "Host header is required",
          type: "invalid_request_error",
          param: null,
          code: null,
        },
      },
    ],
  ])(
    "to %s is 400 in the gateway's shape, with a request id and the API headers",
    async (path, body) => {
      await gateway();
      const { head, body: answer } = await raw(`GET ${path} HTTP/1.1\r\n\r\n`);
      expect(head.split("\r\n")[0]).toBe("HTTP/1.1 400 Bad Request");
      expect(JSON.parse(answer)).toEqual(body);
      expect(head).toMatch(/^x-request-id: [0-9a-f-]{36}$/m);
      expect(head).toContain("content-security-policy: default-src 'none'; frame-ancestors 'none'");
    },
  );

  it("is served over HTTP/1.0, which has no Host", async () => {
    await gateway();
    const { head, body } = await raw("GET /healthz HTTP/1.0\r\n\r\n");
    expect(head.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    expect(body).toBe("ok");
  });
});

describe("requests Node's HTTP parser refuses under /v1", () => {
  const openAi = (message: string) => ({
    error: { message, type: "invalid_request_error", param: null, code: null },
  });

  it.each([
    [
      "a malformed header",
      "GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
      "400 Bad Request",
      "bad request",
    ],
    [
      "headers over Node's size limit",
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`,
      "431 Request Header Fields Too Large",
      "request headers too large",
    ],
  ])("answers %s in OpenAI's shape", async (_case, bytes, status, words) => {
    await gateway();
    const { head, body } = await raw(bytes);
    expect(head.split("\r\n")[0]).toBe(`HTTP/1.1 ${status}`);
    expect(JSON.parse(body)).toEqual(openAi(words));
    expect(head).toMatch(/^x-request-id: [0-9a-f-]{36}$/m);
  });

  it("answers a body slower than REQUEST_TIMEOUT_MS in OpenAI's shape, and /chat's in the gateway's", async () => {
    await gateway({ REQUEST_TIMEOUT_MS: "300" });
    const address = await app.listen({ host: "127.0.0.1", port: 0 });
    const port = Number(new URL(address).port);
    const slow = (path: string) =>
      new Promise<string>((resolve, reject) => {
        let answer = "";
        const socket = net.connect(port, "127.0.0.1", () =>
          socket.write(
            `POST ${path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"model":`,
          ),
        );
        socket.on("data", (chunk) => {
          answer += chunk.toString("latin1");
        });
        socket.on("error", reject);
        socket.on("close", () => resolve(answer));
      });
    const [v1, chat] = await Promise.all([slow("/v1/chat/completions"), slow("/chat")]);
    expect(v1.split("\r\n")[0]).toBe("HTTP/1.1 408 Request Timeout");
    expect(JSON.parse(v1.split("\r\n\r\n")[1] ?? "")).toEqual(openAi("request timeout"));
    expect(chat.split("\r\n")[0]).toBe("HTTP/1.1 408 Request Timeout");
    expect(JSON.parse(chat.split("\r\n\r\n")[1] ?? "")).toEqual({ error: "request timeout" });
  });
});

describe("requests Node's HTTP parser refuses", () => {
  it.each([
    ["a garbage request line", "NOT HTTP AT ALL\r\n\r\n", "400 Bad Request", "bad request"],
    [
      "a malformed header",
      "GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
      "400 Bad Request",
      "bad request",
    ],
    [
      "headers over Node's size limit",
      `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`,
      "431 Request Header Fields Too Large",
      "request headers too large",
    ],
  ])(
    "answers %s in the gateway's shape, with a request id and the API headers",
    async (_case, bytes, status, words) => {
      await gateway();
      const { head, body } = await raw(bytes);
      expect(head.split("\r\n")[0]).toBe(`HTTP/1.1 ${status}`);
      expect(JSON.parse(body)).toEqual({ error: words });
      expect(head).toMatch(/^x-request-id: [0-9a-f-]{36}$/m);
      expect(head).toContain("content-security-policy: default-src 'none'; frame-ancestors 'none'");
      expect(head).toContain("x-content-type-options: nosniff");
      expect(head).toContain("connection: close");
    },
  );
});
