import net, { type AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  freePort,
  postChat,
  type Running,
  type Stack,
  startChatmesh,
  startStack,
  waitHealthy,
} from "../fixtures/processes.js";

/**
 * A Kubernetes Service in small: each new connection goes to the replica
 * `target` names then; connections already made stay with theirs, as
 * kube-proxy leaves them when a pod leaves the endpoints.
 */
async function startServiceProxy(target: { port: number }) {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
    }
    client.pipe(upstream).pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close() {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

describe.each(["frames", "connect", "grpc"] as const)(
  "a rolling update of the llm behind one address, UPSTREAM_PROTOCOL=%s",
  (protocol) => {
    const target = { port: 0 };
    let proxy: Awaited<ReturnType<typeof startServiceProxy>>;
    let stack: Stack;
    beforeAll(async () => {
      proxy = await startServiceProxy(target);
      stack = await startStack({
        UPSTREAM_PROTOCOL: protocol,
        ECHO_DELAY_MS: "150",
        LLM_URL: `http://127.0.0.1:${proxy.port}`,
        LOG_LEVEL: "warn",
      });
      target.port = stack.ports.llm;
    });
    afterAll(async () => {
      proxy?.close();
      await stack?.stopAll();
    });

    it("answers every chat while the old replica drains and the new one takes over", async () => {
      const old = stack.procs.get("llm");
      if (old === undefined) throw new Error("llm is not running");
      const newPort = await freePort();
      const replacement = startChatmesh(["llm"], {
        ...stack.env("llm"),
        LLM_PORT: String(newPort),
      });
      try {
        await waitHealthy(newPort, replacement);
        await rollOver(old, newPort);
      } finally {
        await replacement.stop();
      }
    });

    async function rollOver(old: Running, newPort: number) {
      let chats = 0;
      let stop = false;
      const failures: unknown[] = [];
      const worker = async (w: number) => {
        while (!stop) {
          const n = chats++;
          if (n % 2 === 0) {
            const res = await postChat(stack.gatewayUrl, { user_id: `r${w}-${n}`, text: "hi" });
            if (res.status !== 200) failures.push(res.json);
          } else {
            const res = await fetch(`${stack.gatewayUrl}/chat/stream`, {
              method: "POST",
              headers: { "content-type": "application/json" },
              body: JSON.stringify({ user_id: `r${w}-${n}`, text: "hi there" }),
            });
            const text = await res.text();
            if (res.status !== 200 || !text.includes("event: done")) failures.push(text);
          }
        }
      };
      const workers = Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map(worker));
      await new Promise((r) => setTimeout(r, 500));
      // The pod leaves the endpoints (preStop), then gets SIGTERM.
      target.port = newPort;
      await new Promise((r) => setTimeout(r, 200));
      const exited = old.stop("SIGTERM");
      expect(await exited).toBe(0);
      // Chats on to the new replica alone: by count, not time, so that a
      // loaded machine runs as many as a quiet one.
      const atExit = chats;
      while (chats < Math.max(atExit + 16, 40)) await new Promise((r) => setTimeout(r, 20));
      stop = true;
      await workers;
      const gatewayWarnings = stack.procs
        .get("gateway")
        ?.output()
        .split("\n")
        .filter((line) => /call failed/.test(line));
      expect(failures, gatewayWarnings?.slice(0, 3).join("\n")).toEqual([]);
    }
  },
);
