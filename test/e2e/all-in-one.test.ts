import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bufCurlGrpc } from "../fixtures/curl.js";
import {
  postChat,
  processNames,
  type Running,
  startAllInOne as startAll,
  waitForOutput,
} from "../fixtures/processes.js";
import { expectSeedBodies, expectSeedQuotaLoop } from "../fixtures/seed.js";

describe("chatmesh all: the five components in one process", () => {
  let all: Awaited<ReturnType<typeof startAll>>;
  beforeAll(async () => {
    all = await startAll();
  });
  afterAll(() => all?.stop());

  it("gives the seed's bodies and quota loop byte for byte", async () => {
    await expectSeedBodies(all.url);
    await expectSeedQuotaLoop(all.url, "loop");
  });

  it("says the services are in the process, keeps the history, and streams", async () => {
    expect(all.running.output()).toMatch(
      /"filter":"in this process","token":"in this process","llm":"in this process","history":"in this process"/,
    );
    await postChat(all.url, { user_id: "kept", text: "remember me" });
    await expect
      .poll(async () => (await fetch(`${all.url}/history?user_id=kept`)).json())
      .toMatchObject({ items: [{ text: "remember me", reply: "Echo: remember me" }] });
    const res = await fetch(`${all.url}/chat/stream`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "streamer", text: "one two" }),
    });
    const events = await res.text();
    expect(events).toContain('event: done\ndata: {"reply":"Echo: one two","remaining":150}');
    expect((await fetch(`${all.url}/readyz`)).status).toBe(200);
  });

  it.each([
    [
      "filter",
      "chat.v1.FilterService/Filter",
      '{"text":"Hello   world"}',
      { cleaned: "Hello world" },
    ],
    ["token", "chat.v1.TokenService/CheckAndInc", '{"userId":"bufcurl"}', { remaining: "150" }],
  ] as const)(
    "answers buf curl over gRPC on each service's own port (%s)",
    async (name, path, body, expected) => {
      expect(await bufCurlGrpc(`http://127.0.0.1:${all.ports[name]}/${path}`, body)).toMatchObject(
        expected,
      );
    },
  );
});

describe("chatmesh all, when the model is slow", () => {
  let all: Awaited<ReturnType<typeof startAll>>;
  beforeAll(async () => {
    all = await startAll({ ECHO_DELAY_MS: "3000", LLM_TIMEOUT_MS: "300" });
  });
  afterAll(() => all?.stop());

  it("answers 500 llm failed at the deadline and refunds the charge", async () => {
    const started = Date.now();
    const res = await postChat(all.url, { user_id: "slow", text: "hi" });
    expect(res).toMatchObject({ status: 500, json: { error: "llm failed" } });
    expect(Date.now() - started).toBeLessThan(2_000);
    const { json } = await postChat(all.url, { user_id: "slow", text: "hi" });
    expect(json).toMatchObject({ error: "llm failed" });
    const quota = await (await fetch(`${all.url}/quota?user_id=slow`)).json();
    expect(quota).toMatchObject({ remaining: 200 });
  });
});

describe("chatmesh all, stopping", () => {
  it("drains and exits 0 on SIGTERM, every port closed", async () => {
    const all = await startAll();
    let exited: Running["exited"] | undefined;
    try {
      expect((await postChat(all.url, { user_id: "bye", text: "hi" })).status).toBe(200);
      all.running.child.kill("SIGTERM");
      exited = all.running.exited;
      expect(await exited).toBe(0);
      await waitForOutput(all.running, /"signal":"SIGTERM","msg":"shutting down"/);
      for (const name of processNames) {
        await expect(fetch(`http://127.0.0.1:${all.ports[name]}/healthz`)).rejects.toThrow();
      }
    } finally {
      await all.stop();
    }
  });
});
