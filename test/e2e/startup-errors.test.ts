import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMysqlDatabase } from "../fixtures/databases.js";
import { startChatmesh } from "../fixtures/processes.js";
import {
  makeTestCertificates,
  opensslOrSkip,
  type TestCertificates,
  writeBrokenTlsFiles,
} from "../fixtures/tls.js";

/**
 * Starts `chatmesh <args>` and expects it to exit 1 having printed one line
 * (besides JSON log lines, and no stack trace) that matches `line`; resolves
 * with all it printed.
 */
async function expectRefused(
  args: string[],
  env: Record<string, string>,
  line: RegExp,
): Promise<string> {
  const proc = startChatmesh(args, env);
  expect(await proc.exited).toBe(1);
  const output = proc.output();
  const printed = output
    .trim()
    .split("\n")
    .filter((l) => !l.startsWith("{"));
  expect(printed, output).toHaveLength(1);
  expect(printed[0]).toMatch(line);
  expect(output.trim().split("\n").at(-1)).toBe(printed[0]);
  return output;
}

/** Every port of `chatmesh all` left to the system: these starts stop before listening. */
const anyPorts = {
  TOKEN_PORT: "0",
  FILTER_PORT: "0",
  LLM_PORT: "0",
  HISTORY_PORT: "0",
  GATEWAY_PORT: "0",
};

const dir = mkdtempSync(join(tmpdir(), "chatmesh-startup-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const at = (name: string) => join(dir, name);
const memoryHistory = { HISTORY_DATABASE_URL: "sqlite::memory:" };

describe.runIf(opensslOrSkip())(
  "a broken TLS certificate or CA stops the start with one line",
  () => {
    let certs: TestCertificates;
    beforeAll(async () => {
      certs = await makeTestCertificates();
      writeBrokenTlsFiles(dir);
    });
    afterAll(() => {
      if (certs !== undefined) rmSync(certs.dir, { recursive: true, force: true });
    });

    const mismatch =
      /^chatmesh (token|all): TLS_CERT_FILE and TLS_KEY_FILE must be a PEM certificate and its private key: key values mismatch$/;

    it("names both variables when the key is not the certificate's", async () => {
      const env = { TLS_CERT_FILE: certs.certFile, TLS_KEY_FILE: at("other-key.pem") };
      await expectRefused(["token"], { ...env, TOKEN_PORT: "0" }, mismatch);
      await expectRefused(["all"], { ...env, ...anyPorts, ...memoryHistory }, mismatch);
    });

    it("names TLS_CERT_FILE when the certificate and key are swapped", async () => {
      await expectRefused(
        ["llm"],
        { TLS_CERT_FILE: certs.keyFile, TLS_KEY_FILE: certs.certFile, LLM_PORT: "0" },
        /^chatmesh llm: TLS_CERT_FILE must name a PEM certificate, got ".*key\.pem" \(it holds PRIVATE KEY where CERTIFICATE is expected\)$/,
      );
    });

    it("names TLS_CERT_FILE when its certificate block is not base64", async () => {
      await expectRefused(
        ["filter"],
        { TLS_CERT_FILE: at("bad-base64.pem"), TLS_KEY_FILE: certs.keyFile, FILTER_PORT: "0" },
        /^chatmesh filter: TLS_CERT_FILE must name a PEM certificate, got ".*bad-base64\.pem" \(bad base64 decode\)$/,
      );
    });

    it("names UPSTREAM_CA_FILE when it holds a private key or a broken certificate", async () => {
      await expectRefused(
        ["gateway"],
        { UPSTREAM_CA_FILE: certs.keyFile, GATEWAY_PORT: "0" },
        /^chatmesh gateway: UPSTREAM_CA_FILE must name a PEM file of CA certificates, got ".*key\.pem" \(it holds PRIVATE KEY where CERTIFICATE is expected\)$/,
      );
      await expectRefused(
        ["gateway"],
        { UPSTREAM_CA_FILE: at("bad-base64.pem"), GATEWAY_PORT: "0" },
        /^chatmesh gateway: UPSTREAM_CA_FILE must name a PEM file of CA certificates, got ".*bad-base64\.pem" \(bad base64 decode\)$/,
      );
    });
  },
);

describe("chatmesh all given one port for two components", () => {
  it("stops with one line naming both variables", async () => {
    await expectRefused(
      ["all"],
      // No address of this machine: a start that missed the clash listens nowhere either.
      { ...anyPorts, ...memoryHistory, HOST: "192.0.2.1", TOKEN_PORT: "50100", LLM_PORT: "50100" },
      /^chatmesh all: TOKEN_PORT and LLM_PORT are both 50100 \(each component listens on a port of its own\)$/,
    );
  });
});

describe("a history database that cannot be opened stops the start with one line", () => {
  const refused = (url: string, reason: string) =>
    new RegExp(
      `^chatmesh (history|all): HISTORY_DATABASE_URL must name a database this process can open, got "${url.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}" \\(${reason}\\)$`,
    );

  it.each([
    ["a file that is not a database", () => at("not-a-database"), "file is not a database"],
    ["a directory", () => dir, "unable to open database file"],
    ["a file where its directory should be", () => "/dev/null/history.db", "EEXIST: .+"],
  ])("names HISTORY_DATABASE_URL for %s", async (_, path, reason) => {
    writeFileSync(at("not-a-database"), Buffer.alloc(4096, 0xab));
    const url = `sqlite:${path()}`;
    await expectRefused(
      ["history"],
      { HISTORY_DATABASE_URL: url, HISTORY_PORT: "0" },
      refused(url, reason),
    );
  });

  it("does so in chatmesh all too", async () => {
    const url = "sqlite:/dev/null/history.db";
    await expectRefused(
      ["all"],
      { ...anyPorts, HISTORY_DATABASE_URL: url },
      refused(url, "EEXIST: .+"),
    );
  });

  it("names HISTORY_DATABASE_URL when no MySQL server listens there", async () => {
    const url = "mysql://root@127.0.0.1:1/test";
    await expectRefused(
      ["history"],
      { HISTORY_DATABASE_URL: url, HISTORY_PORT: "0" },
      refused(url, "connect ECONNREFUSED 127.0.0.1:1"),
    );
  });
});

const mysql = await createMysqlDatabase();
if ("skip" in mysql) console.warn(`skipping the MySQL start-up errors: ${mysql.skip}`);

describe.skipIf("skip" in mysql)("a MySQL history that refuses the connection", () => {
  afterAll(async () => {
    if (!("skip" in mysql)) await mysql.drop();
  });

  it("names HISTORY_DATABASE_URL for a wrong password, and never prints the password", async () => {
    if ("skip" in mysql) return;
    const url = new URL(mysql.url);
    url.username = "chatmesh_nobody";
    url.password = "hunter2";
    const output = await expectRefused(
      ["history"],
      { HISTORY_DATABASE_URL: url.toString(), HISTORY_PORT: "0" },
      /^chatmesh history: HISTORY_DATABASE_URL must name a database this process can open, got "mysql:\/\/chatmesh_nobody:\*\*\*@[^"]+" \(Access denied for user 'chatmesh_nobody'@.+\)$/,
    );
    expect(output).not.toContain("hunter2");
  });

  it("names HISTORY_DATABASE_URL for an unknown database", async () => {
    if ("skip" in mysql) return;
    const url = new URL(mysql.url);
    url.pathname = `${url.pathname}_missing`;
    await expectRefused(
      ["history"],
      { HISTORY_DATABASE_URL: url.toString(), HISTORY_PORT: "0" },
      /^chatmesh history: HISTORY_DATABASE_URL must name a database this process can open, got "mysql:.+_missing" \(Unknown database '\w+_missing'\)$/,
    );
  });
});

describe("a URL in an error line never shows its password", () => {
  it.each([
    [
      "token",
      { REDIS_URL: "http://:hunter2@redis.internal:6379" },
      'REDIS_URL must be a redis:// or rediss:// URL, got "http://:***@redis.internal:6379"',
    ],
    [
      "history",
      { HISTORY_DATABASE_URL: "mysql://app:hunter2/x@db.internal:3306" },
      'HISTORY_DATABASE_URL must be sqlite:<file> or mysql://user:pass@host:3306/db, got "mysql://app:***@db.internal:3306"',
    ],
    [
      "llm",
      { LLM_BACKEND: "openai", LLM_MODEL: "m", OPENAI_BASE_URL: "htp://u:hunter2@x/v1" },
      'OPENAI_BASE_URL must be an http:// or https:// URL, got "htp://u:***@x/v1"',
    ],
  ])("chatmesh %s", async (name, env, message) => {
    const output = await expectRefused([name], env, new RegExp(`^chatmesh ${name}: `));
    expect(output).toBe(`chatmesh ${name}: ${message}\n`);
  });
});
