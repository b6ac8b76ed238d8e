import http from "node:http";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { createHttpApp } from "../../src/lib/http-app.js";
import { createMemoryLogger } from "../fixtures/logs.js";
import { runScript } from "../fixtures/processes.js";

/** An app with a slow route and a hijacked stream, its log lines kept in memory. */
async function startApp() {
  const { logger, lines } = createMemoryLogger();
  const app = createHttpApp({ logger, registry: new Registry(), requestId: () => undefined });
  let arrived = () => {};
  const arrival = () => new Promise<void>((resolve) => (arrived = resolve));
  let release = () => {};
  const released = () => new Promise<void>((resolve) => (release = resolve));
  app.post("/slow", async () => {
    const wait = released();
    arrived();
    await wait;
    return { ok: true };
  });
  app.get("/slow", async () => {
    const wait = released();
    arrived();
    await wait;
    return { ok: true };
  });
  app.get("/stream", async (_req, reply) => {
    reply.hijack();
    reply.raw.writeHead(200, { "content-type": "text/event-stream" });
    reply.raw.write("data: 1\n\n");
    const wait = released();
    arrived();
    await wait;
    if (!reply.raw.destroyed) reply.raw.end("data: 2\n\n");
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  return { app, base, lines, arrival, release: () => release() };
}

let running: Awaited<ReturnType<typeof startApp>> | undefined;
afterEach(async () => {
  await running?.app.close();
  running = undefined;
});

/**
 * A request over HTTP/1.1 (a POST with its whole JSON body); the client goes
 * away once the handler has it.
 */
function requestThenGoAway(method: string, url: string, handled: Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    const req = http.request(url, { method, agent: false });
    req.on("error", () => {});
    if (method === "POST") req.setHeader("content-type", "application/json");
    req.end(method === "POST" ? '{"user_id":"u"}' : undefined);
    void handled.then(() => {
      req.destroy();
      resolve();
    });
  });
}

const requestsTotal = async (base: string, route: string) => {
  const text = await (await fetch(`${base}/metrics`)).text();
  const counts: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const match = line.match(/^http_requests_total\{(.*)\} (\d+)$/);
    if (match?.[1]?.includes(`route="${route}"`)) {
      counts[match[1].match(/status="(\d+)"/)?.[1] ?? "?"] = Number(match[2]);
    }
  }
  return counts;
};

const until = async (check: () => boolean) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
};

describe("createHttpApp: requests whose client went away", () => {
  it.each([
    ["GET", "/slow"],
    ["POST", "/slow"],
    ["GET", "/stream"],
  ])("%s %s is counted and logged once, as 499", async (method, route) => {
    running = await startApp();
    const { base, lines, arrival, release } = running;
    const handled = arrival();
    await requestThenGoAway(method, `${base}${route}`, handled);
    await until(() => lines.some((l) => l.route === route));
    release();
    // Answered once the client is gone: nothing more is counted or logged.
    await new Promise((r) => setTimeout(r, 50));
    expect(await requestsTotal(base, route)).toEqual({ "499": 1 });
    const logged = lines.filter((l) => l.route === route);
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ msg: "request", method, status: 499 });
    expect(logged[0]?.ms).toBeGreaterThanOrEqual(0);
    expect(logged[0]?.trace_id).toMatch(/^[0-9a-f]{32}$/);
  });

  it("counts an answered request once, with its status", async () => {
    running = await startApp();
    const { base, lines, arrival, release } = running;
    void arrival().then(release);
    const res = await fetch(`${base}/slow`);
    expect([res.status, await res.json()]).toEqual([200, { ok: true }]);
    await until(() => lines.some((l) => l.route === "/slow"));
    expect(await requestsTotal(base, "/slow")).toEqual({ "200": 1 });
    expect(lines.filter((l) => l.route === "/slow").map((l) => l.status)).toEqual([200]);
  });
});

describe("createHttpApp: a request Fastify cannot route", () => {
  it("is answered with its status and words as JSON, logged and counted", async () => {
    const { logger, lines } = createMemoryLogger();
    const app = createHttpApp({ logger, registry: new Registry(), requestId: () => "rid-1" });
    try {
      const res = await app.inject({ method: "GET", url: "/x%ZZ" });
      expect([res.statusCode, res.json()]).toEqual([
        400,
        { error: "'/x%ZZ' is not a valid url component" },
      ]);
      expect(
        lines.filter((l) => l.msg === "request").map((l) => [l.route, l.status, l.request_id]),
      ).toEqual([["unmatched", 400, "rid-1"]]);
      const metrics = (await app.inject({ method: "GET", url: "/metrics" })).body;
      expect(metrics).toMatch(
        /^http_requests_total\{method="GET",route="unmatched",status="400"\} 1$/m,
      );
    } finally {
      await app.close();
    }
  });
});

describe("createHttpApp: Fastify's schema compilers", () => {
  it("are loaded only for a route with a schema, which they then validate and serialize", async () => {
    // In a process of its own: this worker's module cache may hold them already.
    expect(await runScript(new URL("../fixtures/schema-compilers.ts", import.meta.url))).toEqual({
      atStart: false,
      echoed: { n: 1 },
      afterSchema: true,
      valid: [200, { n: 2 }],
      invalid: 400,
    });
  });

  it("give way to a schemaController the caller passes", async () => {
    const compiledFor: string[] = [];
    const app = createHttpApp({
      logger: createMemoryLogger().logger,
      registry: new Registry(),
      requestId: () => undefined,
      fastify: {
        schemaController: {
          compilersFactory: {
            // Fastify takes { error } from a validator; its types know only Ajv's.
            buildValidator: (() => (route: { method: string; url: string; httpPart: string }) => {
              compiledFor.push(`${route.method} ${route.url} ${route.httpPart}`);
              return (body: { n?: unknown }) =>
                body.n === 7 ? true : { error: new Error("only 7 is accepted") };
            }) as never,
          },
        },
      },
    });
    app.post(
      "/seven",
      { schema: { body: { type: "object", properties: { n: { type: "integer" } } } } },
      async (req) => req.body,
    );
    try {
      const refused = await app.inject({ method: "POST", url: "/seven", payload: { n: 1 } });
      const accepted = await app.inject({ method: "POST", url: "/seven", payload: { n: 7 } });
      // Fastify's own Ajv would have accepted { n: 1 }: an integer.
      expect([refused.statusCode, refused.json().message]).toEqual([400, "only 7 is accepted"]);
      expect([accepted.statusCode, accepted.json()]).toEqual([200, { n: 7 }]);
      expect(compiledFor).toEqual(["POST /seven body"]);
    } finally {
      await app.close();
    }
  });
});
