import { describe, expect, it } from "vitest";
import { ConfigError, loadGatewayConfig, loadLlmConfig } from "../../src/lib/config.js";

const openai = {
  LLM_BACKEND: "openai",
  OPENAI_BASE_URL: "http://127.0.0.1:11434/v1/",
  LLM_MODEL: "llama3.2",
};

describe("config of the openai backend and the token-priced quota", () => {
  it("keeps the echo backend by default, with the upstream timeout and reply cap", () => {
    expect(loadLlmConfig({})).toMatchObject({
      backend: "echo",
      openai: undefined,
      timeoutMs: 60_000,
      maxTokens: 1_024,
    });
  });

  it("reads the openai backend's settings; the key may be empty for local servers", () => {
    const config = loadLlmConfig({ ...openai, LLM_TIMEOUT_MS: "5000", LLM_MAX_TOKENS: "64" });
    expect(config).toMatchObject({
      backend: "openai",
      openai: { baseUrl: "http://127.0.0.1:11434/v1", apiKey: "", model: "llama3.2" },
      timeoutMs: 5_000,
      maxTokens: 64,
    });
    expect(loadLlmConfig({ ...openai, OPENAI_API_KEY: "sk-x" }).openai?.apiKey).toBe("sk-x");
  });

  it.each([
    [{ LLM_BACKEND: "gpt" }, /^LLM_BACKEND must be one of echo, openai, got "gpt"$/],
    [{ ...openai, OPENAI_BASE_URL: "" }, /^OPENAI_BASE_URL is required with LLM_BACKEND=openai/],
    [{ ...openai, OPENAI_BASE_URL: "127.0.0.1:11434" }, /^OPENAI_BASE_URL must be an http/],
    [{ ...openai, LLM_MODEL: " " }, /^LLM_MODEL is required with LLM_BACKEND=openai/],
    [{ ...openai, LLM_TIMEOUT_MS: "0" }, /^LLM_TIMEOUT_MS must be an integer from 1/],
    [{ LLM_MAX_TOKENS: "many" }, /^LLM_MAX_TOKENS must be an integer from 1/],
  ])("refuses %j with one line naming the variable", (env, message) => {
    expect(() => loadLlmConfig(env)).toThrow(ConfigError);
    expect(() => loadLlmConfig(env)).toThrow(message);
  });

  it("trims OPENAI_BASE_URL, so that calls go to its /v1 and not to /v1%20%20", () => {
    const config = loadLlmConfig({ ...openai, OPENAI_BASE_URL: "  http://127.0.0.1:11434/v1  " });
    expect(config.openai?.baseUrl).toBe("http://127.0.0.1:11434/v1");
  });

  it("masks the password of a refused OPENAI_BASE_URL", () => {
    const load = () => loadLlmConfig({ ...openai, OPENAI_BASE_URL: "htp://u:hunter2@x/v1" });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(
      /^OPENAI_BASE_URL must be an http:\/\/ or https:\/\/ URL, got "htp:\/\/u:\*\*\*@x\/v1"$/,
    );
  });

  it("refuses an OPENAI_BASE_URL with a user or password, which fetch would refuse on every call", () => {
    const load = () =>
      loadLlmConfig({ ...openai, OPENAI_BASE_URL: "http://u:hunter2@127.0.0.1:8000/v1" });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(
      /^OPENAI_BASE_URL must hold no user or password \(the key goes in OPENAI_API_KEY\), got "http:\/\/u:\*\*\*@127\.0\.0\.1:8000\/v1"$/,
    );
    expect(() => loadLlmConfig({ ...openai, OPENAI_BASE_URL: "http://u@127.0.0.1/v1" })).toThrow(
      /^OPENAI_BASE_URL must hold no user or password/,
    );
  });

  it.each([
    "https://example.openai.azure.com/openai/deployments/gpt?api-version=2024-06-01",
    "http://127.0.0.1:11434/v1?",
    "http://127.0.0.1:11434/v1#models",
  ])(
    "refuses an OPENAI_BASE_URL with a query or fragment, which every call's path would land in: %s",
    (url) => {
      const load = () => loadLlmConfig({ ...openai, OPENAI_BASE_URL: url });
      expect(load).toThrow(
        new ConfigError(
          `OPENAI_BASE_URL must have no query or fragment (the SDK adds /chat/completions after it), got "${url}"`,
        ),
      );
    },
  );

  it("needs no openai variables with the echo backend", () => {
    expect(loadLlmConfig({ OPENAI_BASE_URL: "nonsense" }).openai).toBeUndefined();
  });

  it("prices chats at the fixed cost by default, or by tokens", () => {
    expect(loadGatewayConfig({})).toMatchObject({ quotaCostMode: "fixed", quotaReplyReserve: 100 });
    expect(
      loadGatewayConfig({ QUOTA_COST_MODE: "tokens", QUOTA_REPLY_RESERVE: "0" }),
    ).toMatchObject({ quotaCostMode: "tokens", quotaReplyReserve: 0 });
    expect(() => loadGatewayConfig({ QUOTA_COST_MODE: "words" })).toThrow(
      /^QUOTA_COST_MODE must be one of fixed, tokens, got "words"$/,
    );
  });
});
