import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postChat, type Stack, startStack } from "../fixtures/processes.js";

const delayMs = 1_500;

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ ECHO_DELAY_MS: String(delayMs) });
});
afterAll(() => stack?.stopAll());

function connects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

describe("graceful shutdown on SIGTERM", () => {
  it.each(["llm", "gateway"] as const)(
    "%s finishes the request in flight, refuses new connections and exits 0",
    async (name) => {
      const proc = stack.procs.get(name);
      if (proc === undefined) throw new Error(`${name} is not running`);
      const inFlight = postChat(stack.gatewayUrl, { user_id: `drain-${name}`, text: "slow one" });
      await new Promise((r) => setTimeout(r, delayMs / 3));
      proc.child.kill("SIGTERM");
      await new Promise((r) => setTimeout(r, 200));
      expect(await connects(stack.ports[name])).toBe(false);
      const res = await inFlight;
      expect(res).toMatchObject({ status: 200, json: { reply: "Echo: slow one" } });
      expect(await proc.exited).toBe(0);
      expect(proc.output()).toMatch(/"msg":"shutting down"/);
      await stack.start(name);
    },
  );
});
