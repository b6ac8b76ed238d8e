import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { createInProcessUpstreams, failingLlmBackend } from "../fixtures/upstreams.js";

let app: FastifyInstance;
afterEach(() => app?.close());

async function gateway(options: Parameters<typeof createInProcessUpstreams>[0] = {}) {
  app = await buildGateway({
    config: loadGatewayConfig({ MAX_TEXT_CHARS: "30", MAX_BODY_BYTES: "1024" }),
    logger: createLogger("gateway", "silent"),
    upstreams: createInProcessUpstreams(options),
  });
  return app;
}

const chat = (payload: unknown, contentType = "application/json") =>
  app.inject({
    method: "POST",
    url: "/chat",
    headers: { "content-type": contentType },
    payload: typeof payload === "string" ? payload : JSON.stringify(payload),
  });

describe("gateway POST /chat over in-process services", () => {
  it("answers the seed's chat", async () => {
    await gateway();
    const res = await chat({ user_id: "u1", text: "Hello   world   from   Go!" });
    expect(res.statusCode).toBe(200);
    expect(res.body).toBe(
      '{"cleaned":"Hello world from Go!","reply":"Echo: Hello world from Go!","remaining":150}',
    );
    // A UUIDv7 (RFC 9562): time-ordered, so history inserts stay local.
    expect(res.headers["x-request-id"]).toMatch(
      /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    );
  });

  it.each([
    ["body not JSON", "{nope", 400, { error: "bad json or missing user_id" }],
    ["JSON that is not an object", "[1]", 400, { error: "bad json or missing user_id" }],
    ["user_id missing", { text: "hi" }, 400, { error: "bad json or missing user_id" }],
    ["user_id empty", { user_id: "", text: "hi" }, 400, { error: "bad json or missing user_id" }],
    [
      "user_id not a string",
      { user_id: 7, text: "hi" },
      400,
      { error: "bad json or missing user_id" },
    ],
    [
      "user_id over 256 characters",
      { user_id: "x".repeat(257), text: "hi" },
      400,
      { error: "user_id too long" },
    ],
    ["text missing", { user_id: "u1" }, 400, { error: "text is required" }],
    ["text not a string", { user_id: "u1", text: ["hi"] }, 400, { error: "text is required" }],
    [
      "text empty after cleaning",
      { user_id: "u1", text: " \u3000\n " },
      400,
      { error: "text is required" },
    ],
    ["text too long", { user_id: "u1", text: "x".repeat(31) }, 400, { error: "text too long" }],
    [
      "text blocked",
      { user_id: "u1", text: "this has foo inside" },
      400,
      { error: "text blocked by filter" },
    ],
    [
      "body too large",
      { user_id: "u1", text: "x".repeat(2000) },
      413,
      { error: "request body too large" },
    ],
  ])("%s", async (_case, payload, status, body) => {
    await gateway();
    const res = await chat(payload);
    expect(res.statusCode).toBe(status);
    expect(res.json()).toEqual(body);
    expect(res.headers["x-request-id"]).toBeDefined();
  });

  it("counts the text limit in code points, not UTF-16 units", async () => {
    await gateway();
    expect((await chat({ user_id: "u1", text: "😀".repeat(30) })).statusCode).toBe(200);
    expect((await chat({ user_id: "u1", text: "😀".repeat(31) })).json()).toEqual({
      error: "text too long",
    });
  });

  it("keeps a leading U+FEFF in user_id and text: another user's quota and history, not u1's", async () => {
    await gateway();
    expect((await chat({ user_id: "u1", text: "hi" })).json().remaining).toBe(150);
    const res = await chat({ user_id: "\ufeffu1", text: "\ufeffhello" });
    expect(res.json()).toEqual({
      cleaned: "\ufeffhello",
      reply: "Echo: \ufeffhello",
      remaining: 150,
    });
    expect((await chat({ user_id: "u1", text: "\ufeff" })).json()).toMatchObject({
      cleaned: "\ufeff",
      remaining: 100,
    });
    const history = await app.inject({ url: `/history?user_id=${encodeURIComponent("\ufeffu1")}` });
    expect(history.json().items.map((item: { text: string }) => item.text)).toEqual([
      "\ufeffhello",
    ]);
  });

  it("refuses a content type other than JSON with 415", async () => {
    await gateway();
    const res = await chat('{"user_id":"u1","text":"hi"}', "text/plain");
    expect(res.statusCode).toBe(415);
    expect(res.json()).toEqual({ error: "content-type must be application/json" });
  });

  it("refuses the fifth chat of the day with 429 and -50, charging nothing", async () => {
    await gateway();
    const seen = [];
    for (let i = 0; i < 6; i++) {
      const res = await chat({ user_id: "u1", text: "quick call" });
      seen.push([res.statusCode, res.json().remaining]);
    }
    expect(seen).toEqual([
      [200, 150],
      [200, 100],
      [200, 50],
      [200, 0],
      [429, -50],
      [429, -50],
    ]);
    expect((await chat({ user_id: "u1", text: "quick call" })).json()).toEqual({
      error: "quota exceeded",
      remaining: -50,
    });
  });

  it("answers 500 llm failed when the model fails, and gives the charge back", async () => {
    await gateway({ llm: failingLlmBackend });
    for (let i = 0; i < 6; i++) {
      const res = await chat({ user_id: "u1", text: "quick call" });
      expect(res.statusCode).toBe(500);
      expect(res.json()).toEqual({ error: "llm failed" });
    }
  });

  it.each([
    ["DELETE", "/chat", "POST"],
    ["GET", "/chat/stream", "POST"],
    ["POST", "/history", "GET, HEAD"],
    ["PUT", "/health?x=1", "GET, HEAD"],
  ])("answers %s %s with 405 and Allow: %s", async (method, url, allow) => {
    await gateway();
    const res = await app.inject({ method: method as "GET", url });
    expect([res.statusCode, res.headers.allow, res.json()]).toEqual([
      405,
      allow,
      { error: "method not allowed" },
    ]);
  });

  // Fastify parses a body for its not-found handler too: not JSON, not
  // UTF-8 or in another charset, it used to make these a 400 or a 415.
  it.each([
    ["POST", "/history", "", "application/json", 405, { error: "method not allowed" }],
    ["DELETE", "/chat", "{nope", "application/json", 405, { error: "method not allowed" }],
    [
      "PUT",
      "/chat",
      Buffer.from([0x7b, 0xff]),
      "application/json",
      405,
      { error: "method not allowed" },
    ],
    ["POST", "/chats", "{nope", "application/json", 404, { error: "not found" }],
    ["POST", "/chats", "{}", "application/json; charset=latin1", 404, { error: "not found" }],
    [
      "POST",
      "/v1/chat",
      "{nope",
      "application/json",
      404,
      {
        error: {
          message: "Unknown request URL: POST /v1/chat",
          type: "invalid_request_error",
          param: null,
          code: "unknown_url",
        },
      },
    ],
  ])(
    "answers %s %s with the body %j (%s) as its route says: %i",
    async (method, url, payload, type, status, body) => {
      await gateway();
      const res = await app.inject({
        method: method as "POST",
        url,
        headers: { "content-type": type },
        payload,
      });
      expect([res.statusCode, res.json()]).toEqual([status, body]);
    },
  );

  it("logs a refusal (blocked, quota spent) as an info line without a stack, a failure as a warning with its error", async () => {
    const { logger, lines } = createMemoryLogger();
    const build = async (options: Parameters<typeof createInProcessUpstreams>[0]) => {
      await app?.close();
      app = await buildGateway({
        config: loadGatewayConfig({}),
        logger,
        upstreams: createInProcessUpstreams(options),
      });
    };
    await build({ llm: failingLlmBackend });
    expect((await chat({ user_id: "logs", text: "has foo" })).statusCode).toBe(400);
    expect((await chat({ user_id: "logs", text: "fails" })).statusCode).toBe(500);
    await build({});
    const statuses = [];
    for (let i = 0; i < 5; i++)
      statuses.push((await chat({ user_id: "logs", text: "hi" })).statusCode);
    expect(statuses).toEqual([200, 200, 200, 200, 429]);
    const about = lines.filter((l) => typeof l.stage === "string");
    expect(about.map((l) => [l.level, l.msg, l.code ?? null, "err" in l])).toEqual([
      [30, "filter refused the chat", "InvalidArgument", false],
      [40, "llm call failed", null, true],
      [30, "token refused the chat", "ResourceExhausted", false],
    ]);
  });

  it("answers a path that is not percent-encoded UTF-8 as its other errors, and logs and counts it", async () => {
    const { logger, lines } = createMemoryLogger();
    app = await buildGateway({
      config: loadGatewayConfig({}),
      logger,
      upstreams: createInProcessUpstreams(),
    });
    const chatRes = await app.inject({
      method: "POST",
      url: "/chat%ZZ",
      payload: { user_id: "u" },
    });
    const v1Res = await app.inject({ method: "GET", url: "/v1/models/%E9" });
    expect([chatRes.statusCode, chatRes.json()]).toEqual([
      400,
      { error: "path is not percent-encoded UTF-8" },
    ]);
    expect([v1Res.statusCode, v1Res.json()]).toEqual([
      400,
      {
        error: {
          message: "path is not percent-encoded UTF-8",
          type: "invalid_request_error",
          param: null,
          code: null,
        },
      },
    ]);
    for (const res of [chatRes, v1Res]) {
      expect(res.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
      expect(res.headers).toMatchObject({
        "x-content-type-options": "nosniff",
        "cache-control": "no-store",
      });
    }
    expect(
      lines
        .filter((l) => l.msg === "request")
        .map((l) => [l.method, l.route, l.status, l.request_id, typeof l.trace_id]),
    ).toEqual([
      ["POST", "unmatched", 400, chatRes.headers["x-request-id"], "string"],
      ["GET", "unmatched", 400, v1Res.headers["x-request-id"], "string"],
    ]);
    const metrics = (await app.inject({ method: "GET", url: "/metrics" })).body;
    expect(metrics).toMatch(
      /^http_requests_total\{method="POST",route="unmatched",status="400"\} 1$/m,
    );
    expect(metrics).toMatch(
      /^http_requests_total\{method="GET",route="unmatched",status="400"\} 1$/m,
    );
  });

  it("answers a path no method serves with 404", async () => {
    await gateway();
    const res = await app.inject({ method: "POST", url: "/chats" });
    expect([res.statusCode, res.headers.allow, res.json()]).toEqual([
      404,
      undefined,
      { error: "not found" },
    ]);
  });

  it("answers GET /health with ok", async () => {
    await gateway();
    const res = await app.inject({ method: "GET", url: "/health" });
    expect([res.statusCode, res.body]).toEqual([200, "ok"]);
  });
});

describe("chatmesh_chats_total", () => {
  const outcomes = async () => {
    const text = (await app.inject({ method: "GET", url: "/metrics" })).body;
    return Object.fromEntries(
      [...text.matchAll(/^chatmesh_chats_total\{outcome="([^"]+)"\} (\d+)$/gm)].map((m) => [
        m[1],
        Number(m[2]),
      ]),
    );
  };

  it("counts every refused chat once, whoever refused it: the route, Fastify or a guard", async () => {
    await gateway();
    const post = (url: string, payload: string | Buffer, headers: Record<string, string> = {}) =>
      app.inject({
        method: "POST",
        url,
        headers: { "content-type": "application/json", ...headers },
        payload,
      });
    const answers = [
      await post("/chat", "nope"),
      await post("/chat", '{"text":"x"}'),
      await post("/chat/stream", ""),
      await post("/chat", "x".repeat(2000)),
      await post("/chat", '{"user_id":"u"}', {
        "content-type": "application/json; charset=latin1",
      }),
      await post("/chat/stream", '{"user_id":"u"}', { "content-encoding": "gzip" }),
      await post("/v1/chat/completions", "nope"),
      await post("/v1/chat/completions", "{}", { "content-encoding": "gzip" }),
      await post("/v1/chat/completions", "{}", { "content-type": "text/plain" }),
    ].map((r) => r.statusCode);
    expect(answers).toEqual([400, 400, 400, 413, 415, 415, 400, 415, 415]);
    // /v1 counts a body that is not JSON in its own terms (its own checks'
    // words name parameters), a refused type or coding as /chat does.
    expect(await outcomes()).toEqual({
      bad_json_or_missing_user_id: 3,
      request_body_too_large: 1,
      "content-type_must_be_application/json": 2,
      "content-encoding_not_supported": 2,
      bad_request: 1,
    });
  });
});
