import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postChat, type Stack, startStack } from "../fixtures/processes.js";

const run = promisify(execFile);

/** The source ports of this machine's established TCP connections to `port`. */
async function clientPorts(port: number): Promise<Set<number>> {
  const { stdout } = await run("ss", ["-Htn", "state", "established", "dport", "=", `:${port}`]);
  const ports = stdout
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => Number(line.trim().split(/\s+/)[2]?.split(":").at(-1)));
  return new Set(ports);
}

describe.each(["frames", "connect", "grpc"] as const)(
  "the gateway with UPSTREAM_PROTOCOL=%s",
  (protocol) => {
    let stack: Stack;
    beforeAll(async () => {
      stack = await startStack({
        UPSTREAM_PROTOCOL: protocol,
        ECHO_DELAY_MS: "0",
        LLM_TIMEOUT_MS: "800",
        UPSTREAM_MAX_CONNECTION_AGE_MS: "1000",
      });
    });
    afterAll(() => stack?.stopAll());

    it("answers, blocks and refuses over quota as the contract says", async () => {
      expect(
        await postChat(stack.gatewayUrl, { user_id: "p", text: "Hello   world   from   Go!" }),
      ).toMatchObject({
        status: 200,
        json: {
          cleaned: "Hello world from Go!",
          reply: "Echo: Hello world from Go!",
          remaining: 150,
        },
      });
      expect(await postChat(stack.gatewayUrl, { user_id: "p", text: "ｆｏｏ" })).toMatchObject({
        status: 400,
        json: { error: "text blocked by filter" },
      });
      expect(await postChat(stack.gatewayUrl, { user_id: "p", text: "\u3000" })).toMatchObject({
        status: 400,
        json: { error: "text is required" },
      });
      for (let i = 0; i < 3; i++) await postChat(stack.gatewayUrl, { user_id: "p", text: "hi" });
      expect(await postChat(stack.gatewayUrl, { user_id: "p", text: "hi" })).toMatchObject({
        status: 429,
        json: { error: "quota exceeded", remaining: -50 },
      });
    });

    it("calls over new connections once UPSTREAM_MAX_CONNECTION_AGE_MS has passed, reaching replicas started since", async () => {
      await postChat(stack.gatewayUrl, { user_id: "age", text: "hi" });
      const before = await clientPorts(stack.ports.filter);
      expect(before.size).toBeGreaterThan(0);
      // 1000 ms, give or take 10 %.
      await new Promise((r) => setTimeout(r, 1_300));
      expect(await postChat(stack.gatewayUrl, { user_id: "age", text: "hi" })).toMatchObject({
        status: 200,
        json: { remaining: 100 },
      });
      const after = await clientPorts(stack.ports.filter);
      expect([...after].filter((port) => !before.has(port)).length).toBeGreaterThan(0);
    });

    it("keeps the deadline of a hung LLM and gives the charge back", async () => {
      const llm = stack.procs.get("llm");
      llm?.child.kill("SIGSTOP");
      try {
        const started = Date.now();
        const res = await postChat(stack.gatewayUrl, { user_id: "hung", text: "hi" });
        expect(res).toMatchObject({ status: 500, json: { error: "llm failed" } });
        expect(Date.now() - started).toBeLessThan(3_000);
      } finally {
        llm?.child.kill("SIGCONT");
      }
      expect(await postChat(stack.gatewayUrl, { user_id: "hung", text: "hi" })).toMatchObject({
        status: 200,
        json: { remaining: 150 },
      });
    });
  },
);
