import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type ProcessName,
  postChat,
  type Stack,
  startStack,
  waitForOutput,
} from "../fixtures/processes.js";

const run = promisify(execFile);
const buf = fileURLToPath(new URL("../../node_modules/.bin/buf", import.meta.url));
const names: ProcessName[] = ["token", "filter", "llm", "history", "gateway"];

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(() => stack?.stopAll());

/** The value of one sample of a Prometheus text exposition, 0 when absent. */
function sample(metrics: string, name: string, labels: Record<string, string>): number {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of metrics.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const inside = line.slice(name.length + 1, line.lastIndexOf("}"));
    const have = inside.split(",");
    if (wanted.every((w) => have.includes(w))) return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return 0;
}

const metricsOf = async (name: ProcessName) =>
  (await fetch(`http://127.0.0.1:${stack.ports[name]}/metrics`)).text();

describe("every process", () => {
  it.each(names)("%s answers /healthz, /readyz and /metrics", async (name) => {
    const base = `http://127.0.0.1:${stack.ports[name]}`;
    const health = await fetch(`${base}/healthz`);
    expect([health.status, await health.text()]).toEqual([200, "ok"]);
    const ready = await fetch(`${base}/readyz`);
    expect([ready.status, await ready.text()]).toEqual([200, "ready"]);
    const metrics = await fetch(`${base}/metrics`);
    expect(metrics.headers.get("content-type")).toMatch(/^text\/plain/);
    const text = await metrics.text();
    expect(text).toContain("# TYPE process_cpu_user_seconds_total counter");
    expect(text).toContain("# TYPE http_requests_total counter");
  });
});

describe("buf curl without a schema (server reflection)", () => {
  it.each([
    ["filter", "chat.v1.FilterService/Filter", '{"text":"a   b"}', { cleaned: "a b" }],
    ["llm", "chat.v1.LLMService/Generate", '{"text":"hi"}', { reply: "Echo: hi" }],
    ["token", "chat.v1.TokenService/CheckAndInc", '{"userId":"reflect"}', { remaining: "150" }],
    ["history", "chat.v1.HistoryService/List", '{"userId":"nobody"}', {}],
  ] as const)("lists and calls the %s service", async (name, path, body, expected) => {
    const base = `http://127.0.0.1:${stack.ports[name]}`;
    const listed = await run(buf, ["curl", "--http2-prior-knowledge", base, "--list-methods"]);
    expect(listed.stdout.split("\n")).toEqual(
      expect.arrayContaining([path, "grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"]),
    );
    const called = await run(buf, [
      "curl",
      "--http2-prior-knowledge",
      "-d",
      body,
      `${base}/${path}`,
    ]);
    expect(JSON.parse(called.stdout)).toMatchObject(expected);
    const alpha = await run(buf, [
      "curl",
      "--http2-prior-knowledge",
      "--reflect-protocol",
      "grpc-v1alpha",
      base,
      "--list-services",
    ]);
    expect(alpha.stdout).toContain(path.split("/")[0]);
  });

  it.each([
    ["filter", "chat.v1.FilterRejection"],
    ["token", "chat.v1.QuotaExceeded"],
  ] as const)(
    "serves the %s service's error details (%s) by reflection, for clients to decode them",
    async (name, symbol) => {
      const { stdout } = await run(buf, [
        "curl",
        "--http2-prior-knowledge",
        "-d",
        JSON.stringify({ fileContainingSymbol: symbol }),
        `http://127.0.0.1:${stack.ports[name]}/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`,
      ]);
      const [file] = (
        JSON.parse(stdout) as { fileDescriptorResponse: { fileDescriptorProto: string[] } }
      ).fileDescriptorResponse.fileDescriptorProto;
      expect(Buffer.from(file as string, "base64").toString("latin1")).toContain(
        "chat/v1/errors.proto",
      );
    },
  );

  it.each(["filter", "llm", "token"] as const)(
    "says SERVING for grpc.health.v1.Health/Check on %s",
    async (name) => {
      const { stdout } = await run(buf, [
        "curl",
        "--http2-prior-knowledge",
        "--protocol",
        "grpc",
        `http://127.0.0.1:${stack.ports[name]}/grpc.health.v1.Health/Check`,
      ]);
      expect(JSON.parse(stdout)).toEqual({ status: "SERVING" });
    },
  );
});

describe("trace propagation", () => {
  it("puts the caller's trace id on log lines of all five processes", async () => {
    const traceId = randomBytes(16).toString("hex");
    const res = await fetch(`${stack.gatewayUrl}/chat`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01`,
      },
      body: JSON.stringify({ user_id: "traced", text: "hi" }),
    });
    expect(res.status).toBe(200);
    const requestId = res.headers.get("x-request-id");
    expect(requestId).toMatch(/^[0-9a-f-]{36}$/);
    for (const name of names) {
      const proc = stack.procs.get(name);
      if (proc === undefined) throw new Error(`${name} is not running`);
      await waitForOutput(
        proc,
        new RegExp(`"trace_id":"${traceId}","request_id":"${requestId}"`),
        5_000,
      );
    }
  });

  it.each([
    ["/chat/stream", { user_id: "traced-stream", text: "hi" }],
    [
      "/v1/chat/completions",
      { model: "echo", user: "traced-openai", messages: [{ role: "user", content: "hi" }] },
    ],
  ])("carries the caller's trace through %s to the token and llm services", async (path, body) => {
    const traceId = randomBytes(16).toString("hex");
    const res = await fetch(`${stack.gatewayUrl}${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01`,
      },
      body: JSON.stringify(body),
    });
    expect(res.status).toBe(200);
    await res.text();
    const requestId = res.headers.get("x-request-id");
    for (const name of ["token", "llm"] as const) {
      const proc = stack.procs.get(name);
      if (proc === undefined) throw new Error(`${name} is not running`);
      await waitForOutput(
        proc,
        new RegExp(`"trace_id":"${traceId}","request_id":"${requestId}"`),
        5_000,
      );
    }
  });

  it("starts a trace when the caller sends none", async () => {
    const res = await postChat(stack.gatewayUrl, { user_id: "untraced", text: "hi" });
    const requestId = res.headers.get("x-request-id");
    const llm = stack.procs.get("llm");
    if (llm === undefined) throw new Error("llm is not running");
    await waitForOutput(
      llm,
      new RegExp(`"trace_id":"[0-9a-f]{32}","request_id":"${requestId}"`),
      5_000,
    );
  });
});

describe("metrics", () => {
  it("count the chats kept in the history, and those waiting", async () => {
    const appended = async () =>
      sample(await metricsOf("gateway"), "chatmesh_history_appends_total", { result: "appended" });
    // The earlier tests' chats are appended in batches, in the background: wait until they are.
    let before = await appended();
    for (;;) {
      await new Promise((r) => setTimeout(r, 300));
      const now = await appended();
      if (now === before) break;
      before = now;
    }
    await postChat(stack.gatewayUrl, {
      user_id: `kept-${randomBytes(4).toString("hex")}`,
      text: "hi",
    });
    const deadline = Date.now() + 5_000;
    while ((await appended()) === before && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect((await appended()) - before).toBe(1);
    const metrics = await metricsOf("gateway");
    expect(metrics).toMatch(/^# TYPE chatmesh_history_appends_total counter$/m);
    expect(sample(metrics, "chatmesh_history_appends_total", { result: "dropped" })).toBe(0);
    expect(metrics).toMatch(/^# TYPE chatmesh_history_pending gauge$/m);
    expect(metrics).toMatch(/^chatmesh_history_pending 0$/m);
  });

  it("count exactly the requests sent, per outcome", async () => {
    const before = {
      gateway: await metricsOf("gateway"),
      filter: await metricsOf("filter"),
      token: await metricsOf("token"),
    };
    const user = `metrics-${randomBytes(4).toString("hex")}`;
    const sent = { ok: 4, quota: 3, blocked: 2, bad: 5 };
    for (let i = 0; i < sent.ok + sent.quota; i++)
      await postChat(stack.gatewayUrl, { user_id: user, text: "hi" });
    for (let i = 0; i < sent.blocked; i++)
      await postChat(stack.gatewayUrl, { user_id: user, text: "foo" });
    for (let i = 0; i < sent.bad; i++) await postChat(stack.gatewayUrl, { text: "no user" });

    const after = {
      gateway: await metricsOf("gateway"),
      filter: await metricsOf("filter"),
      token: await metricsOf("token"),
    };
    const delta = (proc: keyof typeof after, name: string, labels: Record<string, string>) =>
      sample(after[proc], name, labels) - sample(before[proc], name, labels);

    expect(delta("gateway", "chatmesh_chats_total", { outcome: "ok" })).toBe(sent.ok);
    expect(delta("gateway", "chatmesh_chats_total", { outcome: "quota_exceeded" })).toBe(
      sent.quota,
    );
    expect(delta("gateway", "chatmesh_chats_total", { outcome: "text_blocked_by_filter" })).toBe(
      sent.blocked,
    );
    expect(
      delta("gateway", "chatmesh_chats_total", { outcome: "bad_json_or_missing_user_id" }),
    ).toBe(sent.bad);
    expect(delta("gateway", "http_requests_total", { route: "/chat", status: "200" })).toBe(
      sent.ok,
    );
    expect(delta("gateway", "http_requests_total", { route: "/chat", status: "429" })).toBe(
      sent.quota,
    );
    expect(delta("gateway", "http_requests_total", { route: "/chat", status: "400" })).toBe(
      sent.blocked + sent.bad,
    );
    expect(
      delta("gateway", "rpc_client_handled_total", {
        service: "chat.v1.FilterService",
        code: "ok",
      }),
    ).toBe(sent.ok + sent.quota);
    expect(
      delta("gateway", "rpc_client_handled_total", {
        service: "chat.v1.FilterService",
        code: "invalid_argument",
      }),
    ).toBe(sent.blocked);
    expect(delta("filter", "chatmesh_filter_refusals_total", { reason: "blocked" })).toBe(
      sent.blocked,
    );
    expect(delta("filter", "rpc_server_handled_total", { method: "Filter", code: "ok" })).toBe(
      sent.ok + sent.quota,
    );
    expect(delta("token", "chatmesh_quota_events_total", { event: "charged" })).toBe(sent.ok);
    expect(delta("token", "chatmesh_quota_events_total", { event: "rejected" })).toBe(sent.quota);
    expect(
      delta("token", "rpc_server_handled_total", {
        method: "CheckAndInc",
        code: "resource_exhausted",
      }),
    ).toBe(sent.quota);
  });
});

describe("the Grafana dashboard", () => {
  it("queries only metrics the processes export", async () => {
    const dashboard = JSON.parse(
      await readFile(
        new URL("../../deploy/grafana/chatmesh-dashboard.json", import.meta.url),
        "utf8",
      ),
    ) as { panels: { targets: { expr: string }[] }[] };
    const exported = new Set(
      (await Promise.all(names.map(metricsOf)))
        .join("\n")
        .split("\n")
        .filter((line) => line.startsWith("# TYPE "))
        .flatMap((line) => {
          const [, , name, type] = line.split(" ");
          return type === "histogram" ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name];
        }),
    );
    const functions = new Set(["histogram_quantile", "sum", "rate", "clamp_min"]);
    const used = dashboard.panels
      // Label sets, ranges and the labels of `by (…)` are no metric names.
      .flatMap((p) =>
        p.targets.map((t) => t.expr.replace(/\{[^}]*\}|\[[^\]]*\]|by \([^)]*\)/g, "")),
      )
      .flatMap((expr) => expr.match(/[a-z_][a-z0-9_]*/g) ?? [])
      .filter((word) => !functions.has(word) && word.includes("_"));
    expect(used.length).toBeGreaterThan(10);
    expect(used.filter((metric) => !exported.has(metric))).toEqual([]);
    // Job names are the scrape config's (prometheus.yml's or kubernetes.yml's): no query picks one.
    const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr));
    expect(exprs.filter((expr) => /\bjob\s*=/.test(expr))).toEqual([]);
  });
});

describe("gateway readiness", () => {
  it("turns 503 within a second of a service going down, and 200 once it is back", async () => {
    await stack.procs.get("filter")?.stop("SIGKILL");
    const started = Date.now();
    const down = await fetch(`${stack.gatewayUrl}/readyz`);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(down.status).toBe(503);
    expect(await down.text()).toMatch(/^not ready: filter \(/);
    await stack.start("filter");
    const up = await fetch(`${stack.gatewayUrl}/readyz`);
    expect([up.status, await up.text()]).toEqual([200, "ready"]);
  });
});
