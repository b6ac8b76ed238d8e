import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService } from "../../gen/chat/v1/token_pb.js";
import { bufCurlGrpc, curlPost } from "../fixtures/curl.js";
import { postChat, type Stack, startStack } from "../fixtures/processes.js";
import { expectSeedBodies, expectSeedQuotaLoop } from "../fixtures/seed.js";

const run = promisify(execFile);
const llmTimeoutMs = 1_000;

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ LLM_TIMEOUT_MS: String(llmTimeoutMs) });
});
afterAll(() => stack?.stopAll());

/** `curl -s -X POST …/chat` with a body, as the contract's lines do. */
const curlChat = (body: string, contentType = "application/json") =>
  curlPost(`${stack.gatewayUrl}/chat`, body, contentType);

describe("the chain as real processes, driven by curl", () => {
  it("gives the seed's bodies byte for byte", async () => {
    await expectSeedBodies(stack.gatewayUrl);
  });

  it("runs the seed's quota loop: 150, 100, 50, 0, then 429 with -50", async () => {
    await expectSeedQuotaLoop(stack.gatewayUrl, "loop");
  });

  it.each([
    ["body not JSON", "{nope", "application/json", 400, '{"error":"bad json or missing user_id"}'],
    [
      "user_id missing",
      '{"text":"hi"}',
      "application/json",
      400,
      '{"error":"bad json or missing user_id"}',
    ],
    ["text missing", '{"user_id":"e1"}', "application/json", 400, '{"error":"text is required"}'],
    [
      "text blank",
      '{"user_id":"e1","text":"   "}',
      "application/json",
      400,
      '{"error":"text is required"}',
    ],
    [
      "text too long",
      JSON.stringify({ user_id: "e1", text: "x".repeat(8001) }),
      "application/json",
      400,
      '{"error":"text too long"}',
    ],
    [
      "body too large",
      JSON.stringify({ user_id: "e1", text: "x".repeat(70_000) }),
      "application/json",
      413,
      '{"error":"request body too large"}',
    ],
    [
      "not JSON content",
      '{"user_id":"e1","text":"hi"}',
      "text/plain",
      415,
      '{"error":"content-type must be application/json"}',
    ],
  ])(
    "answers %s with the contract's status and body",
    async (_label, body, contentType, status, expected) => {
      expect(await curlChat(body, contentType)).toEqual({ status, body: expected });
    },
  );

  it("lets exactly 4 of 50 concurrent chats of one user through", async () => {
    const results = await Promise.all(
      Array.from({ length: 50 }, () =>
        postChat(stack.gatewayUrl, { user_id: "burst", text: "hi" }),
      ),
    );
    const statuses = results.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(4);
    expect(statuses.filter((s) => s === 429)).toHaveLength(46);
    expect(
      results
        .filter((r) => r.status === 200)
        .map((r) => (r.json as { remaining: number }).remaining)
        .sort(),
    ).toEqual([0, 100, 150, 50]);
  });

  it("answers 50 concurrent chats of 50 users, the gateway printing no warning", async () => {
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        postChat(stack.gatewayUrl, { user_id: `crowd-${i}`, text: "hi" }),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(Array(50).fill(200));
    // Node's warnings (a listener leak, say) go to stderr as lines of their own.
    expect(stack.procs.get("gateway")?.output()).not.toMatch(/Warning/);
  });
});

describe("each service to standard clients", () => {
  it.each([
    [
      "filter",
      "chat.v1.FilterService/Filter",
      '{"text":"Hello   world"}',
      { cleaned: "Hello world" },
    ],
    ["llm", "chat.v1.LLMService/Generate", '{"text":"hi"}', { reply: "Echo: hi" }],
    ["token", "chat.v1.TokenService/CheckAndInc", '{"userId":"bufcurl"}', { remaining: "150" }],
  ] as const)(
    "answers buf curl over gRPC with HTTP/2 prior knowledge (%s)",
    async (name, path, body, expected) => {
      expect(
        await bufCurlGrpc(`http://127.0.0.1:${stack.ports[name]}/${path}`, body),
      ).toMatchObject(expected);
    },
  );

  it.each([
    ["filter", "chat.v1.FilterService/Filter", '{"text":"a   b"}', { cleaned: "a b" }],
    ["llm", "chat.v1.LLMService/Generate", '{"text":"hi"}', { reply: "Echo: hi" }],
    ["token", "chat.v1.TokenService/CheckAndInc", '{"userId":"plain"}', { remaining: "150" }],
  ] as const)(
    "answers plain curl with the Connect protocol over HTTP/1.1 (%s)",
    async (name, path, body, expected) => {
      const { stdout } = await run("curl", [
        "-s",
        "--http1.1",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        `http://127.0.0.1:${stack.ports[name]}/${path}`,
      ]);
      expect(JSON.parse(stdout)).toMatchObject(expected);
    },
  );

  it("answers the generated client over gRPC", async () => {
    const token = createClient(
      TokenService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${stack.ports.token}` }),
    );
    expect((await token.checkAndInc({ userId: "generated" })).remaining).toBe(150n);
  });
});

describe("when a service fails", () => {
  it("answers 500 llm failed within the deadline for a hung LLM, and refunds", async () => {
    const llm = stack.procs.get("llm");
    llm?.child.kill("SIGSTOP");
    try {
      const started = Date.now();
      const res = await postChat(stack.gatewayUrl, { user_id: "hung", text: "hi" });
      const took = Date.now() - started;
      expect(res).toMatchObject({ status: 500, json: { error: "llm failed" } });
      expect(took).toBeGreaterThanOrEqual(llmTimeoutMs - 50);
      expect(took).toBeLessThan(llmTimeoutMs + 1_500);
    } finally {
      llm?.child.kill("SIGCONT");
    }
    const res = await postChat(stack.gatewayUrl, { user_id: "hung", text: "hi" });
    expect(res).toMatchObject({ status: 200, json: { remaining: 150 } });
  });

  it("answers 500 llm failed fast for a killed LLM, refunds, and serves again once it is back", async () => {
    await stack.procs.get("llm")?.stop("SIGKILL");
    const started = Date.now();
    const failed = await postChat(stack.gatewayUrl, { user_id: "killed", text: "hi" });
    expect(Date.now() - started).toBeLessThan(llmTimeoutMs);
    expect(failed).toMatchObject({ status: 500, json: { error: "llm failed" } });

    await stack.start("llm");
    const back = await postChat(stack.gatewayUrl, { user_id: "killed", text: "hi" });
    expect(back).toMatchObject({ status: 200, json: { reply: "Echo: hi", remaining: 150 } });
  });

  it.each(["filter", "token"] as const)(
    "answers 500 %s failed while that service is down, and recovers",
    async (name) => {
      await stack.procs.get(name)?.stop("SIGKILL");
      const down = await postChat(stack.gatewayUrl, { user_id: `down-${name}`, text: "hi" });
      expect(down).toMatchObject({ status: 500, json: { error: `${name} failed` } });
      await stack.start(name);
      const back = await postChat(stack.gatewayUrl, { user_id: `down-${name}`, text: "hi" });
      expect(back.status).toBe(200);
    },
  );
});
