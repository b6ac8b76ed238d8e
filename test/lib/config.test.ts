import { describe, expect, it } from "vitest";
import {
  ConfigError,
  loadClientConfig,
  loadFilterConfig,
  loadGatewayConfig,
  loadHistoryConfig,
  loadTokenConfig,
} from "../../src/lib/config.js";

describe("config", () => {
  it("has the contract's defaults", () => {
    const gateway = loadGatewayConfig({});
    expect(gateway).toMatchObject({
      host: "127.0.0.1",
      port: 8080,
      tokenUrl: "http://127.0.0.1:50051",
      filterUrl: "http://127.0.0.1:50052",
      llmUrl: "http://127.0.0.1:50055",
      maxBodyBytes: 65536,
      maxTextChars: 8000,
    });
    expect(loadTokenConfig({})).toMatchObject({
      port: 50051,
      quotaLimit: 200,
      quotaCost: 50,
      quotaStore: "memory",
      redisUrl: "redis://127.0.0.1:6379",
      quotaFailOpen: false,
    });
    expect(loadFilterConfig({}).port).toBe(50052);
    expect(Object.isFrozen(gateway)).toBe(true);
  });

  it("reads the redis quota store's settings", () => {
    expect(
      loadTokenConfig({
        QUOTA_STORE: "redis",
        REDIS_URL: "rediss://user:pw@redis.internal:6380/2",
        QUOTA_FAIL_OPEN: "true",
      }),
    ).toMatchObject({
      quotaStore: "redis",
      redisUrl: "rediss://user:pw@redis.internal:6380/2",
      quotaFailOpen: true,
    });
  });

  it("reads the environment", () => {
    expect(loadTokenConfig({ TOKEN_PORT: "6000", QUOTA_LIMIT: "1000" })).toMatchObject({
      port: 6000,
      quotaLimit: 1000,
    });
  });

  it.each([
    [{ TOKEN_PORT: "abc" }, /^TOKEN_PORT must be an integer from 0 to 65535, got "abc"$/],
    [{ TOKEN_PORT: "70000" }, /^TOKEN_PORT must be/],
    [{ QUOTA_COST: "0" }, /^QUOTA_COST must be an integer from 1/],
    [{ QUOTA_LIMIT: "1.5" }, /^QUOTA_LIMIT must be an integer/],
    [{ QUOTA_STORE: "etcd" }, /^QUOTA_STORE must be one of memory, redis, got "etcd"$/],
    [{ REDIS_URL: "localhost:6379" }, /^REDIS_URL must be a redis:\/\/ or rediss:\/\/ URL/],
    [{ REDIS_URL: "http://127.0.0.1:6379" }, /^REDIS_URL must be a redis:\/\//],
    [
      { REDIS_URL: "redis://:pw@127.0.0.1:6379/abc" },
      /^REDIS_URL's database \(after the port\) must be a number such as \/0, got "redis:\/\/:\*\*\*@127\.0\.0\.1:6379\/abc"$/,
    ],
    [{ REDIS_URL: "redis://127.0.0.1:6379/1/2" }, /^REDIS_URL's database/],
    [
      { REDIS_URL: "redis://127.0.0.1:6379/?db=abc" },
      /^REDIS_URL takes no query or fragment: the database goes in the path \(\/1\), the password before the host \(redis:\/\/:password@host:6379\), got "redis:\/\/127\.0\.0\.1:6379\/\?db=abc"$/,
    ],
    [
      { REDIS_URL: "redis://127.0.0.1:6379/0?enableOfflineQueue=true" },
      /^REDIS_URL takes no query/,
    ],
    [{ REDIS_URL: "redis://127.0.0.1:6379/0#x" }, /^REDIS_URL takes no query or fragment/],
    [{ QUOTA_FAIL_OPEN: "yes" }, /^QUOTA_FAIL_OPEN must be one of true, false, got "yes"$/],
    [{ LOG_LEVEL: "loud" }, /^LOG_LEVEL must be one of/],
  ])("refuses %j with one line naming the variable", (env, message) => {
    expect(() => loadTokenConfig(env)).toThrow(ConfigError);
    expect(() => loadTokenConfig(env)).toThrow(message);
  });

  it("renews upstream connections every minute unless told otherwise, never more than once a second", () => {
    expect(loadGatewayConfig({}).upstreamMaxConnectionAgeMs).toBe(60_000);
    expect(
      loadGatewayConfig({ UPSTREAM_MAX_CONNECTION_AGE_MS: "0" }).upstreamMaxConnectionAgeMs,
    ).toBe(0);
    expect(() => loadGatewayConfig({ UPSTREAM_MAX_CONNECTION_AGE_MS: "500" })).toThrow(
      'UPSTREAM_MAX_CONNECTION_AGE_MS must be 0 (keep connections) or from 1000 to 86400000, got "500"',
    );
  });

  it("refuses a URL that is not http(s)", () => {
    expect(() => loadGatewayConfig({ LLM_URL: "localhost:50055" })).toThrow(
      /^LLM_URL must be an http:\/\/ or https:\/\/ URL/,
    );
  });

  it.each([
    [
      () => loadTokenConfig({ REDIS_URL: "http://:hunter2@redis.internal:6379" }),
      'REDIS_URL must be a redis:// or rediss:// URL, got "http://:***@redis.internal:6379"',
    ],
    [
      () => loadTokenConfig({ REDIS_URL: "user:hunter2@redis.internal:6379" }),
      'REDIS_URL must be a redis:// or rediss:// URL, got "user:***@redis.internal:6379"',
    ],
    [
      () => loadGatewayConfig({ TOKEN_URL: "grpc://svc:hunter2/@x@token.internal" }),
      'TOKEN_URL must be an http:// or https:// URL, got "grpc://svc:***@token.internal"',
    ],
    [
      () => loadClientConfig({ FILTER_URL: "htp:/u:hunter2@filter" }),
      'FILTER_URL must be an http:// or https:// URL, got "htp:***@filter"',
    ],
    [
      () => loadTokenConfig({ REDIS_URL: "redis://127.0.0.1:6379/?password=hunter2&db=1" }),
      'got "redis://127.0.0.1:6379/?password=***&db=1"',
    ],
    [
      () =>
        loadHistoryConfig({
          HISTORY_DATABASE_URL: "mysql://root@db?sslKey=hunter2&auth_token=hunter2",
        }),
      'got "mysql://root@db?sslKey=***&auth_token=***"',
    ],
  ])("masks the password of a refused URL (%#)", (load, message) => {
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(message);
  });

  it.each([
    "http://token.internal:50051/prefix",
    "http://token.internal:50051/?x=1",
    "http://token.internal:50051#f",
    "http://token.internal:50051?",
    "http://token.internal:50051#",
  ])(
    "refuses a service URL with a path, query or fragment, which the transports would follow differently: %s",
    (url) => {
      expect(() => loadGatewayConfig({ TOKEN_URL: url })).toThrow(
        new ConfigError(
          `TOKEN_URL must be http(s)://host:port with no path, query or fragment, got "${url}"`,
        ),
      );
      expect(() => loadClientConfig({ LLM_URL: url })).toThrow(
        /^LLM_URL must be http\(s\):\/\/host:port/,
      );
    },
  );

  it.each([
    [
      () => loadHistoryConfig({ HISTORY_DATABASE_URL: "mysql://app:p%@db.internal:3306/chat" }),
      `HISTORY_DATABASE_URL's user and password must be percent-encoded (% as %25), got "mysql://app:***@db.internal:3306/chat"`,
    ],
    [
      () =>
        loadTokenConfig({ QUOTA_STORE: "redis", REDIS_URL: "redis://:p%zz@redis.internal:6379" }),
      `REDIS_URL's user and password must be percent-encoded (% as %25), got "redis://:***@redis.internal:6379"`,
    ],
  ])("refuses a password with a bare %, which the client would crash on (%#)", (load, message) => {
    expect(load).toThrow(new ConfigError(message));
  });

  it("takes a blank FILTER_TERMS_FILE as unset, as the other file variables", () => {
    expect(loadFilterConfig({ FILTER_TERMS_FILE: "  " }).termsFile).toBeUndefined();
    expect(loadFilterConfig({ FILTER_TERMS_FILE: "/etc/terms.txt" }).termsFile).toBe(
      "/etc/terms.txt",
    );
  });

  it("takes a percent-encoded password", () => {
    expect(
      loadHistoryConfig({ HISTORY_DATABASE_URL: "mysql://app:p%25@db.internal:3306/chat" })
        .database,
    ).toMatchObject({ dialect: "mysql" });
  });

  it("trims HOST as it trims ports and URLs, and takes a blank one as unset", () => {
    expect(loadTokenConfig({ HOST: "0.0.0.0 \n" }).host).toBe("0.0.0.0");
    expect(loadGatewayConfig({ HOST: " ::1" }).host).toBe("::1");
    expect(loadFilterConfig({ HOST: "  " }).host).toBe("127.0.0.1");
  });

  it("trims URLs like the other values", () => {
    expect(loadGatewayConfig({ TOKEN_URL: "  http://token.internal:50051/ \n" }).tokenUrl).toBe(
      "http://token.internal:50051",
    );
    expect(loadTokenConfig({ REDIS_URL: " redis://redis.internal:6379 " }).redisUrl).toBe(
      "redis://redis.internal:6379",
    );
  });
});
