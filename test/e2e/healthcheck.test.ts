import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { freePort, type Running, startChatmesh } from "../fixtures/processes.js";
import {
  curl,
  makeTestCertificates,
  opensslOrSkip,
  type TestCertificates,
} from "../fixtures/tls.js";

const enabled = opensslOrSkip();

/** Runs `chatmesh healthcheck <name>` with `env`; its exit code and output. */
async function healthcheck(name: string, env: Record<string, string>) {
  const run = startChatmesh(["healthcheck", name], env);
  return { code: await run.exited, out: run.output() };
}

describe("chatmesh healthcheck", () => {
  it("checks a cleartext process over http, on an IPv6 HOST too", async () => {
    const port = await freePort();
    for (const host of ["127.0.0.1", "::1"]) {
      const env = { HOST: host, FILTER_PORT: String(port) };
      const filter = startChatmesh(["filter"], env);
      try {
        await expect
          .poll(() => /"msg":"listening"/.test(filter.output()), { timeout: 30_000 })
          .toBe(true);
        const shown = host === "::1" ? "[::1]" : host;
        expect(await healthcheck("filter", env)).toEqual({
          code: 0,
          out: `filter healthy (http://${shown}:${port}/healthz)\n`,
        });
      } finally {
        await filter.stop();
      }
    }
  }, 90_000);

  it("reports a process that does not answer as unhealthy", async () => {
    const port = await freePort();
    const { code, out } = await healthcheck("llm", { LLM_PORT: String(port) });
    expect(code).toBe(1);
    expect(out).toMatch(
      new RegExp(`^llm unhealthy: http://127\\.0\\.0\\.1:${port}/healthz: .+\n$`),
    );
  });
});

describe.runIf(enabled)("chatmesh healthcheck of a process serving TLS", () => {
  let certs: TestCertificates;
  const running: Running[] = [];
  const env: Record<string, string> = {};
  beforeAll(async () => {
    certs = await makeTestCertificates();
    Object.assign(env, {
      TLS_CERT_FILE: certs.certFile,
      TLS_KEY_FILE: certs.keyFile,
      GATEWAY_PORT: String(await freePort()),
      TOKEN_PORT: String(await freePort()),
    });
    running.push(startChatmesh(["gateway"], env), startChatmesh(["token"], env));
    for (const port of [env.GATEWAY_PORT, env.TOKEN_PORT]) {
      await vi.waitFor(
        async () => {
          const res = await curl(["--cacert", certs.caFile, `https://127.0.0.1:${port}/healthz`]);
          expect(res.out).toBe("ok");
        },
        { timeout: 30_000, interval: 200 },
      );
    }
  }, 60_000);
  afterAll(() => Promise.all(running.map((p) => p.stop())));

  // The certificate is signed by a CA made for this test, which the check
  // is not given: it checks liveness on the machine's own address only.
  it.each(["gateway", "token"])("finds %s healthy over https", async (name) => {
    const port = name === "gateway" ? env.GATEWAY_PORT : env.TOKEN_PORT;
    expect(await healthcheck(name, env)).toEqual({
      code: 0,
      out: `${name} healthy (https://127.0.0.1:${port}/healthz)\n`,
    });
  });
});
