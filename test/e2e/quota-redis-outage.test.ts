import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, postChat, waitForOutput } from "../fixtures/processes.js";
import { type Launched, launch, waitReadyz } from "../fixtures/quota-stack.js";
import { type OwnRedis, redisServerOrSkip, startOwnRedis } from "../fixtures/redis.js";

const available = redisServerOrSkip();
const tokenTimeoutMs = 2_000;

describe.runIf(available)("the chain when its own Redis dies mid-run and comes back", () => {
  let redis: OwnRedis;
  let token: Launched;
  let gateway: Launched;
  const procs: Launched[] = [];

  beforeAll(async () => {
    redis = await startOwnRedis();
    const [filter, llm, tokenProc] = await Promise.all([
      launch("filter", {}),
      launch("llm", {}),
      launch("token", { QUOTA_STORE: "redis", REDIS_URL: redis.url }),
    ]);
    token = tokenProc as Launched;
    procs.push(filter as Launched, llm as Launched, token);
    await waitReadyz(token.port, 200);
    gateway = await launch("gateway", {
      FILTER_URL: (filter as Launched).url,
      LLM_URL: (llm as Launched).url,
      TOKEN_URL: token.url,
      TOKEN_TIMEOUT_MS: String(tokenTimeoutMs),
    });
    procs.push(gateway);
  });
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.running.stop()));
    await redis?.kill();
  });

  it("answers 500 token failed within the deadline, stays up, and serves again by itself", async () => {
    // Chats keep coming from several users while Redis is killed under them.
    const results: { status: number; json: unknown; ms: number }[] = [];
    let stop = false;
    const client = async (n: number) => {
      for (let i = 0; !stop; i++) {
        const started = Date.now();
        const res = await postChat(gateway.url, { user_id: `mid-${n}-${i}`, text: "hi" });
        results.push({ status: res.status, json: res.json, ms: Date.now() - started });
      }
    };
    const clients = Promise.all([0, 1, 2, 3].map(client));
    await new Promise((r) => setTimeout(r, 500));
    await redis.kill();
    const killedAt = results.length;
    await new Promise((r) => setTimeout(r, 1_500));
    stop = true;
    await clients;

    expect(killedAt).toBeGreaterThan(0);
    expect(results.some((r) => r.status === 200)).toBe(true);
    const failures = results.filter((r) => r.status !== 200);
    expect(failures.length).toBeGreaterThan(0);
    for (const r of failures) expect([r.status, r.json]).toEqual([500, { error: "token failed" }]);
    for (const r of results) expect(r.ms).toBeLessThan(tokenTimeoutMs + 1_500);

    const started = Date.now();
    const down = await postChat(gateway.url, { user_id: "while-down", text: "hi" });
    expect([down.status, down.json]).toEqual([500, { error: "token failed" }]);
    expect(Date.now() - started).toBeLessThan(tokenTimeoutMs);
    expect(await waitReadyz(token.port, 503)).toMatch(/^not ready: redis/);
    expect(token.running.child.exitCode).toBeNull();
    expect(gateway.running.child.exitCode).toBeNull();

    await redis.restart();
    await waitReadyz(token.port, 200);
    const back = await postChat(gateway.url, { user_id: "after", text: "hi" });
    expect([back.status, back.json]).toMatchObject([200, { remaining: 150 }]);
    expect(token.running.child.exitCode).toBeNull();
    expect(token.running.output()).toMatch(/redis unreachable/);
    // The reconnect is logged by the client's "ready" event, which may trail the first ping.
    await waitForOutput(token.running, /redis reachable again/, 5_000);
  });
});

describe("the chain with QUOTA_FAIL_OPEN while its Redis is away", () => {
  const procs: Launched[] = [];
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.running.stop()));
  });

  it("stays ready, token and gateway, and lets chats through uncharged", async () => {
    const [filter, llm, token] = (await Promise.all([
      launch("filter", {}),
      launch("llm", {}),
      launch("token", {
        QUOTA_STORE: "redis",
        // Nothing listens there.
        REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
        QUOTA_FAIL_OPEN: "true",
      }),
    ])) as Launched[] as [Launched, Launched, Launched];
    procs.push(filter, llm, token);
    const gateway = await launch("gateway", {
      FILTER_URL: filter.url,
      LLM_URL: llm.url,
      TOKEN_URL: token.url,
    });
    procs.push(gateway);
    // Serving chats, so ready: not ready would take every replica out of its Service.
    expect(await waitReadyz(token.port, 200)).toBe("ready");
    expect(await waitReadyz(gateway.port, 200)).toBe("ready");
    const chat = await postChat(gateway.url, { user_id: "open", text: "hi" });
    expect([chat.status, chat.json]).toMatchObject([200, { reply: "Echo: hi", remaining: 200 }]);
    expect(chat.headers.get("ratelimit-remaining")).toBeNull();
    expect(token.running.output()).toMatch(/chat let through uncharged/);
  });
});
