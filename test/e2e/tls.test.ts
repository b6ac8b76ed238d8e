import { execFile } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { freePort, type ProcessName, type Running, startChatmesh } from "../fixtures/processes.js";
import {
  curl,
  makeTestCertificates,
  opensslOrSkip,
  type TestCertificates,
} from "../fixtures/tls.js";

const run = promisify(execFile);
const enabled = opensslOrSkip();
const services = ["token", "filter", "llm", "history"] as const;
const portEnv: Record<ProcessName, string> = {
  token: "TOKEN_PORT",
  filter: "FILTER_PORT",
  llm: "LLM_PORT",
  history: "HISTORY_PORT",
  gateway: "GATEWAY_PORT",
};

let certs: TestCertificates;
const ports = {} as Record<ProcessName | "grpcGateway" | "untrusting", number>;
const running: Running[] = [];
const apiKey = "tls-test-key-0123456789";

/** Polls GET /healthz over https with the test CA until it answers. */
async function waitHealthyTls(port: number, proc: Running) {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (proc.child.exitCode !== null) throw new Error(`${proc.name} exited:\n${proc.output()}`);
    const res = await curl(["--cacert", certs.caFile, `https://127.0.0.1:${port}/healthz`]);
    if (res.code === 0 && res.out === "ok") return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${proc.name} not healthy over TLS:\n${proc.output()}`);
}

async function start(name: ProcessName, port: number, env: Record<string, string>) {
  const proc = startChatmesh([name], { ...env, [portEnv[name]]: String(port) });
  running.push(proc);
  await waitHealthyTls(port, proc);
  return proc;
}

const gw = (port: number) => `https://127.0.0.1:${port}`;
const chatArgs = (port: number, body: object, extra: string[] = []) => [
  "--cacert",
  certs.caFile,
  "-w",
  "\n%{http_code}",
  "-X",
  "POST",
  "-H",
  "content-type: application/json",
  "-d",
  JSON.stringify(body),
  ...extra,
  `${gw(port)}/chat`,
];

describe.runIf(enabled)("TLS on every listener and on the gateway's upstream calls", () => {
  beforeAll(async () => {
    certs = await makeTestCertificates();
    for (const name of [...services, "gateway", "grpcGateway", "untrusting"] as const) {
      ports[name] = await freePort();
    }
    const tls = { TLS_CERT_FILE: certs.certFile, TLS_KEY_FILE: certs.keyFile };
    const urls = Object.fromEntries(
      services.map((s) => [`${s.toUpperCase()}_URL`, `https://127.0.0.1:${ports[s]}`]),
    );
    await Promise.all(
      services.map((s) =>
        start(s, ports[s], {
          ...tls,
          HISTORY_DATABASE_URL: `sqlite:${join(certs.dir, "history.db")}`,
        }),
      ),
    );
    writeFileSync(join(certs.dir, "keys"), `${apiKey} tls-user\n`);
    const gatewayEnv = { ...tls, ...urls, UPSTREAM_CA_FILE: certs.caFile };
    await Promise.all([
      start("gateway", ports.gateway, gatewayEnv),
      start("gateway", ports.grpcGateway, {
        ...gatewayEnv,
        UPSTREAM_PROTOCOL: "grpc",
        API_KEYS_FILE: join(certs.dir, "keys"),
      }),
      // Serves over TLS but does not trust the services' CA.
      start("gateway", ports.untrusting, { ...tls, ...urls }),
    ]);
  }, 90_000);

  afterAll(async () => {
    await Promise.all(running.map((p) => p.stop()));
    if (certs !== undefined) rmSync(certs.dir, { recursive: true, force: true });
  });

  it("answers the seed's chat over https end to end, and keeps it in history", async () => {
    const res = await curl(
      chatArgs(ports.gateway, { user_id: "t1", text: "Hello   world   from   Go!" }),
    );
    expect(res.code).toBe(0);
    expect(res.out).toBe(
      '{"cleaned":"Hello world from Go!","reply":"Echo: Hello world from Go!","remaining":150}\n200',
    );
    const blocked = await curl(
      chatArgs(ports.gateway, { user_id: "t1", text: "this has foo inside" }),
    );
    expect(blocked.out).toBe('{"error":"text blocked by filter"}\n400');
    await vi.waitFor(
      async () => {
        const page = await curl([
          "--cacert",
          certs.caFile,
          `${gw(ports.gateway)}/history?user_id=t1`,
        ]);
        expect(JSON.parse(page.out).items.map((i: { text: string }) => i.text)).toEqual([
          "Hello world from Go!",
        ]);
      },
      { timeout: 10_000, interval: 200 },
    );
  });

  it("calls the services over gRPC on TLS too, with API keys", async () => {
    const auth = ["-H", `authorization: Bearer ${apiKey}`];
    const ok = await curl(chatArgs(ports.grpcGateway, { text: "over grpc" }, auth));
    expect(ok.out).toBe('{"cleaned":"over grpc","reply":"Echo: over grpc","remaining":150}\n200');
    const none = await curl(chatArgs(ports.grpcGateway, { user_id: "tls-user", text: "hi" }));
    expect(none.out).toBe('{"error":"invalid api key"}\n401');
    const other = await curl(chatArgs(ports.grpcGateway, { user_id: "someone", text: "hi" }, auth));
    expect(other.out).toBe('{"error":"user_id does not match the api key"}\n400');
  });

  it("runs the seed's client against the https services, trusting UPSTREAM_CA_FILE", async () => {
    const client = startChatmesh(["client", "over   tls"], {
      FILTER_URL: `https://127.0.0.1:${ports.filter}`,
      LLM_URL: `https://127.0.0.1:${ports.llm}`,
      UPSTREAM_CA_FILE: certs.caFile,
    });
    expect(await client.exited).toBe(0);
    expect(client.output()).toBe("✅ 过滤后文本： over tls\nLLM reply => Echo: over tls\n");
  });

  it("fails the chat when the gateway does not trust the services' certificate", async () => {
    const res = await curl(chatArgs(ports.untrusting, { user_id: "t2", text: "hi" }));
    expect(res.out).toBe('{"error":"filter failed"}\n500');
  });

  it("serves gRPC over h2 and Connect over HTTP/1.1 and HTTP/2 on each service's TLS port", async () => {
    const { stdout } = await run("npx", [
      "buf",
      "curl",
      "--cacert",
      certs.caFile,
      "--protocol",
      "grpc",
      "-d",
      '{"text":"Hello   world"}',
      `https://127.0.0.1:${ports.filter}/chat.v1.FilterService/Filter`,
    ]);
    expect(JSON.parse(stdout)).toEqual({ cleaned: "Hello world" });
    for (const version of ["--http1.1", "--http2"]) {
      const res = await curl([
        "--cacert",
        certs.caFile,
        version,
        "-w",
        " %{http_version}",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        '{"text":"hi"}',
        `https://127.0.0.1:${ports.llm}/chat.v1.LLMService/Generate`,
      ]);
      const cut = res.out.lastIndexOf(" ");
      expect(JSON.parse(res.out.slice(0, cut))).toMatchObject({ reply: "Echo: hi" });
      expect(res.out.slice(cut + 1)).toBe(version === "--http2" ? "2" : "1.1");
    }
  });

  it("refuses plain-HTTP clients and clients that do not trust the certificate", async () => {
    for (const port of [ports.gateway, ports.filter, ports.token]) {
      const plain = await curl(["-w", "%{http_code}", `http://127.0.0.1:${port}/healthz`]);
      expect(plain.code, plain.err).not.toBe(0);
      expect(plain.out).toBe("000");
      const untrusted = await curl([`https://127.0.0.1:${port}/healthz`]);
      expect(untrusted.code).toBe(60);
    }
    // The refused clients left every process up.
    for (const proc of running) expect(proc.child.exitCode).toBeNull();
  });

  it("stops a process with one line naming an unreadable certificate", async () => {
    const proc = startChatmesh(["llm"], {
      LLM_PORT: String(await freePort()),
      TLS_CERT_FILE: join(certs.dir, "missing.pem"),
      TLS_KEY_FILE: certs.keyFile,
    });
    expect(await proc.exited).toBe(1);
    expect(proc.output()).toMatch(
      /^chatmesh llm: TLS_CERT_FILE must name a readable PEM file, got ".*missing\.pem" \(ENOENT\)\n$/,
    );
  });
});
