import { randomUUID } from "node:crypto";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService } from "../../gen/chat/v1/token_pb.js";
import { windowAt } from "../../src/services/token/clock.js";
import { quotaKeys } from "../../src/services/token/redis-store.js";
import { freePort, postChat } from "../fixtures/processes.js";
import { type Launched, launch, waitReadyz } from "../fixtures/quota-stack.js";
import { createTestRedis, redisUrl, sharedRedisOrSkip } from "../fixtures/redis.js";

const available = await sharedRedisOrSkip();
const prefix = "chatmesh:quota:";
const counterKey = (userId: string) => quotaKeys(prefix, userId, windowAt(new Date())).counter;

describe.runIf(available)("two token replicas on the shared Redis, behind two gateways", () => {
  const procs: Launched[] = [];
  const users: string[] = [];
  let gateways: Launched[];
  let brokenLlmGateway: Launched;
  let tokens: Launched[];
  let admin: ReturnType<typeof createTestRedis>;
  const freshUser = (label: string) => {
    const user = `${label}-${randomUUID()}`;
    users.push(user);
    return user;
  };

  beforeAll(async () => {
    admin = createTestRedis();
    const [filter, llm, ...replicas] = await Promise.all([
      launch("filter", {}),
      launch("llm", {}),
      launch("token", { QUOTA_STORE: "redis", REDIS_URL: redisUrl }),
      launch("token", { QUOTA_STORE: "redis", REDIS_URL: redisUrl }),
    ]);
    tokens = replicas as Launched[];
    procs.push(filter as Launched, llm as Launched, ...tokens);
    await Promise.all(tokens.map((t) => waitReadyz(t.port, 200)));
    const via = (token: Launched, llmUrl: string) => ({
      FILTER_URL: (filter as Launched).url,
      LLM_URL: llmUrl,
      TOKEN_URL: token.url,
    });
    const deadLlm = `http://127.0.0.1:${await freePort()}`;
    const started = await Promise.all([
      launch("gateway", via(tokens[0] as Launched, (llm as Launched).url)),
      launch("gateway", via(tokens[1] as Launched, (llm as Launched).url)),
      launch("gateway", via(tokens[1] as Launched, deadLlm)),
    ]);
    gateways = started.slice(0, 2);
    brokenLlmGateway = started[2] as Launched;
    procs.push(...started);
  });
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.running.stop()));
    if (admin) {
      for (const user of users) await admin.deletePrefix(`${prefix}{${encodeURIComponent(user)}}`);
      admin.disconnect();
    }
  });

  it("lets exactly 4 of 200 concurrent chats of one fresh user through, and counts 200", async () => {
    const user = freshUser("burst");
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        postChat((gateways[i % 2] as Launched).url, { user_id: user, text: "hi" }),
      ),
    );
    const ok = results.filter((r) => r.status === 200);
    const refused = results.filter((r) => r.status === 429);
    expect([ok.length, refused.length]).toEqual([4, 196]);
    expect(ok.map((r) => (r.json as { remaining: number }).remaining).sort()).toEqual([
      0, 100, 150, 50,
    ]);
    for (const r of refused) {
      expect(r.json).toEqual({ error: "quota exceeded", remaining: -50 });
      expect(r.headers.get("ratelimit-remaining")).toBe("0");
    }
    expect(await admin.get(counterKey(user))).toBe("200");
    const quota = await fetch(`${gateways[1]?.url}/quota?user_id=${encodeURIComponent(user)}`);
    expect(await quota.json()).toMatchObject({ used: 200, remaining: 0, limit: 200 });
  });

  it("charges a charge id sent to both replicas once", async () => {
    const user = freshUser("idempotent");
    const answers = [];
    for (const token of tokens) {
      const client = createClient(TokenService, createGrpcTransport({ baseUrl: token.url }));
      answers.push(await client.checkAndInc({ userId: user, chargeId: "request-1" }));
    }
    expect(answers.map((a) => a.remaining)).toEqual([150n, 150n]);
    expect(await admin.get(counterKey(user))).toBe("50");
  });

  it("gives back the exact charge of a chat whose LLM failed", async () => {
    const user = freshUser("refund");
    expect(
      (await postChat((gateways[0] as Launched).url, { user_id: user, text: "hi" })).status,
    ).toBe(200);
    const failed = await postChat(brokenLlmGateway.url, { user_id: user, text: "hi" });
    expect([failed.status, failed.json]).toEqual([500, { error: "llm failed" }]);
    expect(await admin.get(counterKey(user))).toBe("50");
    const next = await postChat((gateways[1] as Launched).url, { user_id: user, text: "hi" });
    expect(next.json).toMatchObject({ remaining: 100 });
  });
});
