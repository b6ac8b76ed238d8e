import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { HistoryService } from "../../gen/chat/v1/history_pb.js";
import { bufCurlGrpc, curl } from "../fixtures/curl.js";
import { createMysqlDatabase } from "../fixtures/databases.js";
import {
  freePort,
  postChat,
  type Running,
  type Stack,
  startChatmesh,
  startStack,
  waitHealthy,
} from "../fixtures/processes.js";

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ HISTORY_TIMEOUT_MS: "1000", HISTORY_RETRY_WINDOW_MS: "60000" });
});
afterAll(() => stack?.stopAll());

interface HistoryBody {
  items: { id: string; text: string; reply: string; created_at: string }[];
  next_page_token: string;
}

/** `curl -s …/history?…`, as a user would page through it. */
const curlHistory = (query: string) => curl([`${stack.gatewayUrl}/history?${query}`]);

async function texts(userId: string): Promise<string[]> {
  const all: string[] = [];
  let token = "";
  do {
    const res = await curlHistory(`user_id=${userId}&page_size=2&page_token=${token}`);
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body) as HistoryBody;
    all.push(...body.items.map((i) => i.text));
    token = body.next_page_token;
  } while (token !== "");
  return all;
}

async function chat(userId: string, text: string) {
  const res = await postChat(stack.gatewayUrl, { user_id: userId, text });
  expect(res.status).toBe(200);
  return res;
}

describe("history through the real processes", () => {
  it("shows chats made through the gateway in GET /history, newest first", async () => {
    await chat("e2e-1", "Hello   world   from   Go!");
    await chat("e2e-1", "这是一条最小链路测试 👋");
    await chat("e2e-1", "third");
    expect((await postChat(stack.gatewayUrl, { user_id: "e2e-1", text: "has foo" })).status).toBe(
      400,
    );
    await vi.waitFor(async () => expect(await texts("e2e-1")).toHaveLength(3), { timeout: 10_000 });
    expect(await texts("e2e-1")).toEqual([
      "third",
      "这是一条最小链路测试 👋",
      "Hello world from Go!",
    ]);
    const first = JSON.parse((await curlHistory("user_id=e2e-1&page_size=1")).body) as HistoryBody;
    expect(first.items[0]).toEqual({
      id: expect.stringMatching(/^\d+$/),
      text: "third",
      reply: "Echo: third",
      created_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
    });
    expect(first.next_page_token).not.toBe("");
  });

  it("keeps streamed chats once they reach done", async () => {
    const res = await fetch(`${stack.gatewayUrl}/chat/stream`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "e2e-stream", text: "streamed   words here" }),
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain("event: done");
    await vi.waitFor(
      async () => expect(await texts("e2e-stream")).toEqual(["streamed words here"]),
      {
        timeout: 10_000,
      },
    );
  });

  it("answers the contract's errors", async () => {
    expect(await curlHistory("page_size=2")).toEqual({
      status: 400,
      body: '{"error":"user_id is required"}',
    });
    expect(await curlHistory("user_id=e2e-1&page_token=not-a-token")).toEqual({
      status: 400,
      body: '{"error":"invalid page_token"}',
    });
  });

  it("serves chat.v1.HistoryService to buf curl over gRPC", async () => {
    expect(
      await bufCurlGrpc(
        `http://127.0.0.1:${stack.ports.history}/chat.v1.HistoryService/List`,
        '{"userId":"e2e-1","pageSize":1}',
      ),
    ).toMatchObject({ entries: [{ userId: "e2e-1", text: "third" }] });
  });

  it("loses nothing when the history process is killed and restarted", async () => {
    for (const n of [1, 2, 3]) await chat("e2e-restart", `before ${n}`);
    await vi.waitFor(async () => expect(await texts("e2e-restart")).toHaveLength(3), {
      timeout: 10_000,
    });
    await stack.procs.get("history")?.stop("SIGKILL");
    await stack.start("history");
    expect(await texts("e2e-restart")).toEqual(["before 3", "before 2", "before 1"]);
    expect((await texts("e2e-1")).length).toBe(3);
  });

  it("answers GET /history within one HISTORY_TIMEOUT_MS while history hangs, appends pending", async () => {
    const history = stack.procs.get("history");
    history?.child.kill("SIGSTOP");
    try {
      await chat("e2e-hung", "while it hangs");
      // The chat's append is gathered for 25 ms, then sent to the stopped process.
      await new Promise((r) => setTimeout(r, 30));
      const started = Date.now();
      const res = await curlHistory("user_id=e2e-hung");
      const took = Date.now() - started;
      expect(res).toEqual({ status: 500, body: '{"error":"history failed"}' });
      // HISTORY_TIMEOUT_MS is 1,000: the wait for the append and the read share it.
      expect(took).toBeGreaterThanOrEqual(900);
      expect(took).toBeLessThan(1_800);
    } finally {
      history?.child.kill("SIGCONT");
    }
    await vi.waitFor(async () => expect(await texts("e2e-hung")).toEqual(["while it hangs"]), {
      timeout: 10_000,
    });
  });

  it("answers chats while history is down, and stores them once it is back", async () => {
    await stack.procs.get("history")?.stop("SIGKILL");
    const started = Date.now();
    for (const n of [1, 2, 3]) {
      const res = await chat("e2e-outage", `during ${n}`);
      expect(res.json).toMatchObject({ reply: `Echo: during ${n}` });
    }
    expect(Date.now() - started).toBeLessThan(5_000);
    expect((await curlHistory("user_id=e2e-outage")).status).toBe(500);
    expect((await curlHistory("user_id=e2e-outage")).body).toBe('{"error":"history failed"}');
    await new Promise((r) => setTimeout(r, 1_500));
    await stack.start("history");
    await vi.waitFor(async () => expect(await texts("e2e-outage")).toHaveLength(3), {
      timeout: 30_000,
      interval: 250,
    });
    expect(await texts("e2e-outage")).toEqual(["during 3", "during 2", "during 1"]);
    expect(await texts("e2e-restart")).toHaveLength(3);
  });
});

const mysql = await createMysqlDatabase();
if ("skip" in mysql) console.warn(`skipping the history process on MySQL: ${mysql.skip}`);

describe.skipIf("skip" in mysql)("the history process on MariaDB", () => {
  const procs: Running[] = [];
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()));
    if (!("skip" in mysql)) await mysql.drop();
  });

  it("migrates at start-up, is ready, and keeps chats across a restart", async () => {
    if ("skip" in mysql) return;
    const port = await freePort();
    const env = { HISTORY_PORT: String(port), HISTORY_DATABASE_URL: mysql.url };
    const start = async () => {
      const proc = startChatmesh(["history"], env);
      procs.push(proc);
      await waitHealthy(port, proc);
      return proc;
    };
    const first = await start();
    expect(first.output()).toMatch(
      /"database":"mysql:\/\/[^"]*chatmesh_test_\w+".*history store ready/,
    );
    expect(await (await fetch(`http://127.0.0.1:${port}/readyz`)).text()).toBe("ready");
    const client = createClient(
      HistoryService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }),
    );
    const text = "MariaDB 👋 这是 ".repeat(500);
    await client.append({ userId: "maria", text, reply: "r", requestId: "maria-1" });
    await first.stop("SIGKILL");
    await start();
    const again = createClient(
      HistoryService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }),
    );
    await again.append({ userId: "maria", text: "other", reply: "r", requestId: "maria-1" });
    const { entries } = await again.list({ userId: "maria" });
    expect(entries.map((e) => e.text)).toEqual([text]);
  });
});
