import { describe, expect, it } from "vitest";
import { ConfigError, loadGatewayConfig, loadHistoryConfig } from "../../src/lib/config.js";

describe("history config", () => {
  it("has the contract's defaults", () => {
    expect(loadHistoryConfig({})).toMatchObject({
      port: 50053,
      database: { dialect: "sqlite", path: "./data/history.db" },
    });
    expect(loadGatewayConfig({})).toMatchObject({
      historyUrl: "http://127.0.0.1:50053",
      historyTimeoutMs: 2_000,
      historyRetryWindowMs: 60_000,
      historyQueueLimit: 10_000,
    });
  });

  it.each([
    [
      "sqlite:/var/lib/chatmesh/history.db",
      { dialect: "sqlite", path: "/var/lib/chatmesh/history.db" },
    ],
    ["sqlite:///tmp/h.db", { dialect: "sqlite", path: "/tmp/h.db" }],
    ["sqlite::memory:", { dialect: "sqlite", path: ":memory:" }],
    [
      "mysql://chat:s3cret@db.internal:3306/chatmesh",
      { dialect: "mysql", url: "mysql://chat:s3cret@db.internal:3306/chatmesh" },
    ],
  ])("reads HISTORY_DATABASE_URL=%s", (url, database) => {
    expect(loadHistoryConfig({ HISTORY_DATABASE_URL: url }).database).toEqual(database);
  });

  it.each([
    "postgres://localhost/db",
    "sqlite:",
    "mysql://localhost:3306",
    "mysql://localhost:3306/",
    "history.db",
  ])("refuses HISTORY_DATABASE_URL=%s with one line", (url) => {
    expect(() => loadHistoryConfig({ HISTORY_DATABASE_URL: url })).toThrow(ConfigError);
    expect(() => loadHistoryConfig({ HISTORY_DATABASE_URL: url })).toThrow(
      /^HISTORY_DATABASE_URL must be sqlite:<file> or mysql:\/\/user:pass@host:3306\/db, got "/,
    );
  });

  it.each([
    "sqlite:./data/history.db?mode=ro",
    "sqlite:///var/lib/chatmesh/history.db?cache=shared&mode=rwc",
  ])("refuses SQLite parameters, which would name another file: HISTORY_DATABASE_URL=%s", (url) => {
    expect(() => loadHistoryConfig({ HISTORY_DATABASE_URL: url })).toThrow(
      new ConfigError(
        `HISTORY_DATABASE_URL's sqlite: file takes no parameters (nothing after "?"), got "${url}"`,
      ),
    );
  });

  it.each([
    ["mysql://db.internal/chatmesh", undefined],
    ["mysql://db.internal/chatmesh?ssl-mode=disabled", undefined],
    ["mysql://db.internal/chatmesh?ssl-mode=REQUIRED", { verify: "none", caFile: undefined }],
    ["mysql://db.internal/chatmesh?ssl-mode=VERIFY_CA", { verify: "ca", caFile: undefined }],
    [
      "mysql://db.internal/chatmesh?ssl-mode=verify_identity&ssl-ca=/etc/ssl/db-ca.pem",
      { verify: "identity", caFile: "/etc/ssl/db-ca.pem" },
    ],
  ])("reads the TLS of HISTORY_DATABASE_URL=%s", (url, tls) => {
    const { database } = loadHistoryConfig({ HISTORY_DATABASE_URL: url });
    expect(database.dialect === "mysql" ? database.tls : "not mysql").toEqual(tls);
  });

  it.each([
    [
      "mysql://u:hunter2@db/chatmesh?ssl=true",
      'HISTORY_DATABASE_URL has a parameter chatmesh does not know, "ssl" (known: ssl-mode, ssl-ca)',
    ],
    [
      "mysql://db/chatmesh?ssl-mode=PREFERRED",
      'HISTORY_DATABASE_URL\'s ssl-mode must be DISABLED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY, got "PREFERRED"',
    ],
    [
      "mysql://db/chatmesh?ssl-mode=REQUIRED&ssl-ca=/ca.pem",
      "HISTORY_DATABASE_URL's ssl-ca needs ssl-mode=VERIFY_CA or VERIFY_IDENTITY",
    ],
    [
      "mysql://10.0.0.5/chatmesh?ssl-mode=VERIFY_IDENTITY",
      "HISTORY_DATABASE_URL's ssl-mode=VERIFY_IDENTITY needs the server's name, not an IP address (the MySQL driver cannot check an address): use the name in its certificate, or VERIFY_CA",
    ],
    [
      "mysql://[::1]/chatmesh?ssl-mode=verify_identity",
      "HISTORY_DATABASE_URL's ssl-mode=VERIFY_IDENTITY needs the server's name, not an IP address (the MySQL driver cannot check an address): use the name in its certificate, or VERIFY_CA",
    ],
    [
      "mysql://db/chatmesh?ssl-ca=%E9",
      "HISTORY_DATABASE_URL has a parameter that is not percent-encoded UTF-8",
    ],
  ])(
    "refuses HISTORY_DATABASE_URL=%s rather than connect without the TLS it meant",
    (url, line) => {
      const load = () => loadHistoryConfig({ HISTORY_DATABASE_URL: url });
      expect(load).toThrow(ConfigError);
      expect(load).toThrow(new ConfigError(line));
    },
  );

  it("shows no value of a parameter it refuses: it could be a password", () => {
    const load = () =>
      loadHistoryConfig({ HISTORY_DATABASE_URL: "mysql://u@db/chatmesh?password=hunter2" });
    expect(load).toThrow('parameter chatmesh does not know, "password"');
    expect(load).not.toThrow(/hunter2/);
  });

  it("reads ssl-ca as a percent-encoded path: + stays +", () => {
    const tlsOf = (url: string) => {
      const { database } = loadHistoryConfig({ HISTORY_DATABASE_URL: url });
      return database.dialect === "mysql" ? database.tls?.caFile : undefined;
    };
    expect(tlsOf("mysql://db/c?ssl-mode=VERIFY_CA&ssl-ca=/etc/ssl/db+ca.pem")).toBe(
      "/etc/ssl/db+ca.pem",
    );
    expect(tlsOf("mysql://db/c?ssl-mode=VERIFY_CA&ssl-ca=%2Fdir%20x%2Fa%26b%23c.pem")).toBe(
      "/dir x/a&b#c.pem",
    );
  });

  it("does not print the password of a bad URL", () => {
    expect(() =>
      loadHistoryConfig({ HISTORY_DATABASE_URL: "mysql://root:hunter2@db:3306" }),
    ).toThrow('got "mysql://root:***@db:3306"');
  });

  it.each([
    ["mysql://app:hunter2/x@db.internal:3306", "mysql://app:***@db.internal:3306"],
    ["mysql://app:hunter2@x@db.internal", "mysql://app:***@db.internal"],
    ["mysql:app:hunter2@db.internal", "mysql:***@db.internal"],
  ])("does not print the password of %s, however malformed", (url, shown) => {
    const load = () => loadHistoryConfig({ HISTORY_DATABASE_URL: url });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(`got "${shown}"`);
  });

  it.each([
    [{ HISTORY_PORT: "x" }, /^HISTORY_PORT must be an integer/],
    [{ HISTORY_URL: "db:1" }, /^HISTORY_URL must be an http/],
    [{ HISTORY_TIMEOUT_MS: "0" }, /^HISTORY_TIMEOUT_MS must be an integer from 1/],
    [{ HISTORY_RETRY_WINDOW_MS: "-5" }, /^HISTORY_RETRY_WINDOW_MS must be an integer from 0/],
    [{ HISTORY_QUEUE_LIMIT: "many" }, /^HISTORY_QUEUE_LIMIT must be an integer from 0/],
  ])("refuses %j", (env, message) => {
    const load = () => ("HISTORY_PORT" in env ? loadHistoryConfig(env) : loadGatewayConfig(env));
    expect(load).toThrow(message);
  });
});
