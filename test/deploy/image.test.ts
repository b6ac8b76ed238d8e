import { execFile, spawn } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { builtinModules } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadTokenConfig } from "../../src/lib/config.js";
import { mallocEnv } from "../../src/lib/node-options.js";
import { type Container, canIsolate, startContainer } from "../fixtures/container.js";
import { createMysqlDatabase, type TestDatabase } from "../fixtures/databases.js";
import { chatmeshHasProcess } from "../fixtures/deploy.js";
import { type DockerSteps, runDockerfile } from "../fixtures/dockerfile.js";
import { type OpenAiTestDouble, startOpenAiTestDouble } from "../fixtures/openai-test-double.js";
import { freePort, repoRoot as repo, waitHealthy } from "../fixtures/processes.js";
import { type OwnRedis, startOwnRedis } from "../fixtures/redis.js";
import { expectSeedBodies, expectSeedQuotaLoop } from "../fixtures/seed.js";

/**
 * The Dockerfile's steps run outside Docker (no engine here): the build
 * stage's `npm ci` and `npm run build`, the runtime stage's
 * `npm ci --omit=dev`, then the image's command started from the runtime
 * stage's folder exactly as the container runs it: compiled JavaScript only.
 */
const run = promisify(execFile);
const pkg = JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

const lock = JSON.parse(readFileSync(join(repo, "package-lock.json"), "utf8")) as {
  packages: Record<string, { dev?: boolean }>;
};

let out: string;
let steps: DockerSteps;
beforeAll(async () => {
  out = mkdtempSync(join(tmpdir(), "chatmesh-image-"));
  // The image's user (uid 1000) must reach the stage folders, as in an image.
  chmodSync(out, 0o755);
  steps = await runDockerfile({ context: repo, out });
  if (!canIsolate) {
    console.log("image test: not root or no util-linux: the command runs as a plain child");
  }
}, 600_000);
afterAll(() => {
  if (out !== undefined) rmSync(out, { recursive: true, force: true });
});

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" }).map((f) => join(dir, f));
}

describe("the image", () => {
  it("is a small Node 20 base, non-root, binding all interfaces, one command per process", () => {
    for (const base of steps.image.baseImages)
      expect(base).toMatch(/^node:20(\.\d+)*-(slim|alpine)/);
    expect(steps.image.user).toBe("node");
    expect(steps.image.env.HOST).toBe("0.0.0.0");
    // The malloc setting run-all and `make bench` give every process.
    for (const [name, value] of Object.entries(mallocEnv))
      expect(steps.image.env[name]).toBe(value);
    expect(steps.image.entrypoint).toEqual(["node", "bin/chatmesh.js"]);
    expect(steps.image.cmd).toEqual(["gateway"]);
    expect(steps.image.healthcheck.cmd).toEqual(["node", "bin/chatmesh.js", "healthcheck"]);
    expect([...steps.image.expose].sort((a, b) => a - b)).toEqual([
      8080, 50051, 50052, 50053, 50055,
    ]);
  });

  it("holds the build and production dependencies only: no sources, no tsx, no dev tools", () => {
    const app = steps.workdir;
    expect(existsSync(join(app, "dist/src/cli.js"))).toBe(true);
    // The bundle (scripts/build.mjs) with the chat page beside it.
    expect(existsSync(join(app, "dist/src/page/index.html"))).toBe(true);
    expect(existsSync(join(app, "dist/gen"))).toBe(false);
    expect(existsSync(join(app, "src"))).toBe(false);
    expect(existsSync(join(app, "test"))).toBe(false);
    const installed = readdirSync(join(app, "node_modules")).filter((n) => !n.startsWith("."));
    // Dev dependencies that no production dependency also needs.
    const devOnly = Object.keys(pkg.devDependencies).filter(
      (name) => lock.packages[`node_modules/${name}`]?.dev === true,
    );
    expect(devOnly).toContain("tsx");
    for (const dev of devOnly) expect(existsSync(join(app, "node_modules", dev)), dev).toBe(false);
    for (const dep of Object.keys(pkg.dependencies)) {
      expect(existsSync(join(app, "node_modules", dep)), dep).toBe(true);
    }
    expect(installed).not.toContain("tsx");
    expect(installed).not.toContain("typescript");
  });

  it("reports errors at their TypeScript lines: the bundle's source maps, read under the image's --enable-source-maps", async () => {
    // A history table that something else made: the schema migration fails,
    // an unexpected error printed with its stack.
    const dataDir = mkdtempSync(join(out, "history-"));
    chmodSync(dataDir, 0o777);
    const path = join(dataDir, "history.db");
    const db = new Database(path);
    db.exec("CREATE TABLE history_entries (x TEXT)");
    db.close();
    chmodSync(path, 0o666);
    const history = startContainer(steps, ["history"], {
      HISTORY_PORT: String(await freePort()),
      HISTORY_DATABASE_URL: `sqlite:${path}`,
    });
    expect(await history.exited).toBe(1);
    expect(history.output()).toMatch(
      /^chatmesh history: failed to start: Error: history schema migration failed$/m,
    );
    expect(history.output()).toMatch(
      /at migrateHistory \(\S*\/src\/services\/history\/migrations\.ts:\d+:\d+\)/,
    );
  });

  it("stops with one line naming HISTORY_DATABASE_URL when the database cannot be opened", async () => {
    // A file where the history's folder should be.
    const history = startContainer(steps, ["history"], {
      HISTORY_PORT: String(await freePort()),
      HISTORY_DATABASE_URL: "sqlite:/etc/passwd/history.db",
    });
    expect(await history.exited).toBe(1);
    expect(history.output()).toMatch(
      /^chatmesh history: HISTORY_DATABASE_URL must name a database this process can open, got "sqlite:\/etc\/passwd\/history\.db" \(E\w+: [^\n]+\)\n$/,
    );
  });

  it("bundles every dependency but the native SQLite driver and Fastify's schema compilers: the rest it loads are Node built-ins", () => {
    // What esbuild leaves to Node: static and dynamic imports, and require()
    // calls of bundled CommonJS code.
    const imports = [
      /(?:^|[;\n])import\s*(?:[\w$*\s{},]*?from\s*)?"([^"]+)"/g,
      /\bimport\("([^"]+)"\)/g,
      /\b__require\("([^"]+)"\)/g,
    ];
    const left = new Set<string>();
    for (const file of filesUnder(join(steps.workdir, "dist")).filter((f) => f.endsWith(".js"))) {
      const text = readFileSync(file, "utf8");
      for (const pattern of imports) {
        for (const [, specifier] of text.matchAll(pattern)) {
          if (!(specifier as string).startsWith("./")) left.add(specifier as string);
        }
      }
    }
    const builtins = new Set(builtinModules);
    const notBuiltin = [...left].filter((s) => !builtins.has(s.replace(/^node:/, "")));
    // cardinal: mysql2's optional SQL highlighter, required inside a try.
    // Fastify's schema compilers: loaded from node_modules, and only for a
    // route with a schema (src/lib/http-app.ts).
    expect(notBuiltin.sort()).toEqual([
      "@fastify/ajv-compiler",
      "@fastify/fast-json-stringify-compiler",
      "better-sqlite3",
      "cardinal",
    ]);
    expect(left).toContain("node:http2");
  });
});

// The optional drivers are chunks of the bundle that the default stack never
// loads: each is started here from the build (mysql2 once lost its named
// exports in the bundle).
const mysql = await createMysqlDatabase();
if ("skip" in mysql) console.log(`skipped: the build's optional parts: ${mysql.skip}`);

describe.skipIf("skip" in mysql)(
  "the build with a MySQL history, an OpenAI-compatible model and token-counted quota",
  () => {
    const database = mysql as TestDatabase;
    const containers: Container[] = [];
    let model: OpenAiTestDouble;
    let gateway: number;

    beforeAll(async () => {
      model = await startOpenAiTestDouble();
      const names = ["token", "filter", "llm", "history", "gateway"] as const;
      const env: Record<string, string> = {
        LLM_BACKEND: "openai",
        OPENAI_BASE_URL: model.baseUrl,
        LLM_MODEL: "test-double-model",
        HISTORY_DATABASE_URL: database.url,
        QUOTA_COST_MODE: "tokens",
      };
      const ports: Record<string, number> = {};
      for (const name of names) {
        ports[name] = await freePort();
        env[`${name.toUpperCase()}_PORT`] = String(ports[name]);
        env[`${name.toUpperCase()}_URL`] = `http://127.0.0.1:${ports[name]}`;
      }
      gateway = ports.gateway as number;
      for (const name of names) containers.push(startContainer(steps, [name], env));
      await Promise.all(
        names.map((name, i) => {
          const c = containers[i] as Container;
          return Promise.race([
            waitHealthy(ports[name] as number),
            c.exited.then((code) => {
              throw new Error(`${name} exited (${code}):\n${c.output()}`);
            }),
          ]);
        }),
      );
    }, 120_000);
    afterAll(async () => {
      await Promise.all(containers.map((c) => c.stop()));
      await model?.close();
      await database.drop();
    });

    it("answers from the model, charges by tokens, and keeps the chat in MySQL", async () => {
      const res = await fetch(`http://127.0.0.1:${gateway}/chat`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ user_id: "bundle", text: "Hello from the bundle" }),
      });
      const body = (await res.json()) as { reply?: string; remaining?: number };
      expect(res.status).toBe(200);
      expect(body.reply).toBe("Reply to: Hello from the bundle");
      expect(model.requests.at(-1)?.body.model).toBe("test-double-model");
      // Charged the counted tokens, not the fixed cost of 50.
      expect(body.remaining).toBeGreaterThan(150);
      expect(body.remaining).toBeLessThan(200);
      let items: { reply: string }[] = [];
      for (let i = 0; i < 100 && items.length === 0; i++) {
        const history = await fetch(`http://127.0.0.1:${gateway}/history?user_id=bundle`);
        items = ((await history.json()) as { items?: typeof items }).items ?? [];
        if (items.length === 0) await new Promise((r) => setTimeout(r, 100));
      }
      expect(items.map((i) => i.reply)).toEqual(["Reply to: Hello from the bundle"]);
    });
  },
);

describe("the stack started from the image's command", () => {
  const containers = new Map<string, Container>();
  const ports: Record<string, number> = { token: 0, filter: 0, llm: 0, gateway: 0 };
  let env: Record<string, string>;
  let withHistory = false;

  beforeAll(async () => {
    withHistory = await chatmeshHasProcess("history");
    if (withHistory) ports.history = 0;
    else console.log("image test: this build has no history process yet; the stack runs without");
    for (const name of Object.keys(ports)) ports[name] = await freePort();
    env = {};
    for (const [name, port] of Object.entries(ports)) {
      env[`${name.toUpperCase()}_PORT`] = String(port);
      if (name !== "gateway") env[`${name.toUpperCase()}_URL`] = `http://127.0.0.1:${port}`;
    }
    // The history, if any, on its default: the embedded SQLite in the image's data/.
    for (const name of Object.keys(ports).filter((n) => n !== "gateway")) {
      containers.set(name, startContainer(steps, [name], env));
    }
    // The gateway is the image's default command: no arguments.
    containers.set("gateway", startContainer(steps, [], env, "gateway"));
    await Promise.all(
      Object.entries(ports).map(async ([name, port]) => {
        const c = containers.get(name) as Container;
        await Promise.race([
          waitHealthy(port),
          c.exited.then((code) => {
            throw new Error(`${name} exited (${code}):\n${c.output()}`);
          }),
        ]);
      }),
    );
  });
  afterAll(() => Promise.all([...containers.values()].map((c) => c.stop())));

  // The ports are chosen in beforeAll.
  const gatewayUrl = () => `http://127.0.0.1:${ports.gateway}`;

  it("gives the seed's bodies byte for byte", async () => {
    await expectSeedBodies(gatewayUrl());
  });

  it("runs the seed's quota loop: 150, 100, 50, 0, then 429 with -50", async () => {
    await expectSeedQuotaLoop(gatewayUrl(), "u2");
  });

  it("passes the image's HEALTHCHECK, run inside the container as Docker runs it", async () => {
    const gateway = containers.get("gateway") as Container;
    const result = await gateway.exec(steps.image.healthcheck.cmd);
    if (canIsolate) {
      // PID 1 of the container is the gateway: the check finds it by itself.
      expect(result).toMatchObject({ code: 0, stdout: expect.stringContaining("gateway healthy") });
    }
    const named = await gateway.exec([...steps.image.healthcheck.cmd, "token"]);
    expect(named).toMatchObject({ code: 0, stdout: expect.stringContaining("token healthy") });
  });

  it("fails the HEALTHCHECK of a process that does not answer", async () => {
    const gateway = containers.get("gateway") as Container;
    const { code, stderr } = await gateway.exec([
      "env",
      `HISTORY_PORT=${await freePort()}`,
      ...steps.image.healthcheck.cmd,
      "history",
    ]);
    expect(code).toBe(1);
    expect(stderr).toMatch(/^history unhealthy: /);
  });

  it("keeps the chats in the embedded history, written as the image's user", async ({ skip }) => {
    if (!withHistory) skip("this build has no history process yet");
    let items: { text: string; reply: string }[] = [];
    for (let i = 0; i < 100 && items.length === 0; i++) {
      const res = await fetch(`http://127.0.0.1:${ports.gateway}/history?user_id=u1`);
      items = ((await res.json()) as { items?: typeof items }).items ?? [];
      if (items.length === 0) await new Promise((r) => setTimeout(r, 100));
    }
    expect(items[0]).toMatchObject({
      text: "Hello world from Go!",
      reply: "Echo: Hello world from Go!",
    });
  });

  it("stops gracefully on SIGTERM as PID 1, exiting 0", async () => {
    const llm = containers.get("llm") as Container;
    expect(await llm.stop("SIGTERM")).toBe(0);
    expect(llm.output()).toContain('"msg":"shutting down"');
  });
});

describe("run-all from the build", () => {
  it("starts every process from dist/ and stops them all on Ctrl-C", async () => {
    const env: Record<string, string> = { PATH: process.env.PATH ?? "", HOST: "127.0.0.1" };
    for (const name of ["TOKEN_PORT", "FILTER_PORT", "LLM_PORT", "HISTORY_PORT", "GATEWAY_PORT"]) {
      env[name] = String(await freePort());
    }
    const child = spawn(process.execPath, ["bin/chatmesh.js", "run-all"], {
      cwd: steps.workdir,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      output += d.toString();
    });
    const exited = new Promise((resolve) => child.once("exit", resolve));
    const deadline = Date.now() + 30_000;
    while (!output.includes("chatmesh is up") && child.exitCode === null && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    child.kill("SIGINT");
    expect(await exited, output).toBe(0);
    expect(output).toContain("chatmesh is up");
  });
});

/** Whether this build's token process knows QUOTA_STORE=redis (the Exact quota work). */
function redisQuotaSupported(): boolean {
  try {
    loadTokenConfig({ QUOTA_STORE: "redis" });
    return true;
  } catch {
    return false;
  }
}
const redisQuota = redisQuotaSupported();
const redisServer = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].find(existsSync);
if (!redisQuota) {
  console.log(
    "skipped: two gateways + two token replicas on Redis: QUOTA_STORE=redis is not supported by this build's config yet",
  );
} else if (redisServer === undefined) {
  if (process.env.CI === "true") throw new Error("CI needs redis-server for the Redis quota test");
  console.log(
    "skipped: two gateways + two token replicas on Redis: no redis-server on this machine",
  );
}

describe.skipIf(!redisQuota || redisServer === undefined)(
  "two gateways and two token replicas on one Redis, from the image's command",
  () => {
    const containers: Container[] = [];
    let redisPort: number;
    let redis: OwnRedis | undefined;
    const gateways: number[] = [];

    beforeAll(async () => {
      // Our own Redis, so the shared one is never touched; one that does not
      // start (its port taken meanwhile) fails here, not as 200 token failures.
      redis = await startOwnRedis();
      redisPort = redis.port;
      const port = { filter: await freePort(), llm: await freePort() };
      const base = {
        FILTER_PORT: String(port.filter),
        LLM_PORT: String(port.llm),
        FILTER_URL: `http://127.0.0.1:${port.filter}`,
        LLM_URL: `http://127.0.0.1:${port.llm}`,
        QUOTA_STORE: "redis",
        REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      };
      const waits: Promise<void>[] = [];
      const start = (args: string[], env: Record<string, string>, healthPort: number) => {
        const c = startContainer(steps, args, { ...base, ...env });
        containers.push(c);
        waits.push(waitHealthy(healthPort));
      };
      start(["filter"], {}, port.filter);
      start(["llm"], {}, port.llm);
      for (let i = 0; i < 2; i++) {
        const token = await freePort();
        const gateway = await freePort();
        gateways.push(gateway);
        start(["token"], { TOKEN_PORT: String(token) }, token);
        // Each gateway talks to its own token replica; both share the Redis budget.
        start(
          ["gateway"],
          {
            GATEWAY_PORT: String(gateway),
            TOKEN_URL: `http://127.0.0.1:${token}`,
            // What is tested is the count under 200 chats at once, not the
            // 2 s default deadlines, which a busy CI machine may exceed (5
            // of the 200 once failed there).
            FILTER_TIMEOUT_MS: "20000",
            TOKEN_TIMEOUT_MS: "20000",
          },
          gateway,
        );
      }
      await Promise.all(waits);
    }, 120_000);
    afterAll(async () => {
      await Promise.all(containers.map((c) => c.stop()));
      await redis?.kill();
    });

    it("holds the quota exactly: 200 concurrent chats of one user give 4 × 200 and 196 × 429", async () => {
      const user = `deploy-${Date.now()}`;
      const results = await Promise.all(
        Array.from({ length: 200 }, async (_, i) => {
          const res = await fetch(`http://127.0.0.1:${gateways[i % 2]}/chat`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ user_id: user, text: "quick call" }),
          });
          return {
            status: res.status,
            json: (await res.json()) as { remaining?: number; error?: string },
          };
        }),
      );
      // Counted by status and error, so a failure shows what the others got.
      const answers: Record<string, number> = {};
      for (const { status, json } of results) {
        const key = status === 200 ? "200" : `${status} ${json.error}`;
        answers[key] = (answers[key] ?? 0) + 1;
      }
      expect(answers).toEqual({ "200": 4, "429 quota exceeded": 196 });
      const ok = results.filter((r) => r.status === 200);
      expect(ok.map((r) => r.json.remaining).sort((a = 0, b = 0) => a - b)).toEqual([
        0, 50, 100, 150,
      ]);
      const { stdout } = await run("redis-cli", ["-p", String(redisPort), "--scan"]);
      const counters = [];
      for (const key of stdout.split("\n").filter((k) => k.includes(user))) {
        const { stdout: value } = await run("redis-cli", [
          "-p",
          String(redisPort),
          "get",
          key,
        ]).catch(() => ({ stdout: "" }));
        counters.push(value.trim());
      }
      expect(counters).toContain("200");
    });
  },
);
