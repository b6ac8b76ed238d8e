import net from "node:net";
import { afterEach, describe, expect, it, vi } from "vitest";

const ephemeralStart = 32_768;

/** ports.ts read afresh under `poolId` (it reads VITEST_POOL_ID once, when loaded). */
async function freePortAs(poolId: string): Promise<() => Promise<number>> {
  vi.stubEnv("VITEST_POOL_ID", poolId);
  vi.resetModules();
  return (await import("../../src/dev/ports.js")).freePort;
}

const listenOn = (port: number) =>
  new Promise<net.Server>((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });

afterEach(() => {
  vi.unstubAllEnvs();
  vi.resetModules();
});

describe("freePort", () => {
  it("hands a test worker ports from its own range, below the ephemeral ports", async () => {
    const freePort = await freePortAs("3");
    const ports = [await freePort(), await freePort(), await freePort()];
    for (const port of ports) {
      expect(port).toBeGreaterThanOrEqual(23_000);
      expect(port).toBeLessThan(24_500);
    }
    expect(new Set(ports).size).toBe(3);
  });

  it("hands anything else ports below the workers' ranges, never ephemeral ones", async () => {
    const freePort = await freePortAs("");
    const port = await freePort();
    expect(port).toBeGreaterThanOrEqual(18_500);
    expect(port).toBeLessThan(20_000);
    expect(port).toBeLessThan(ephemeralStart);
    // It is free: a server can listen on it.
    const server = await listenOn(port);
    await new Promise((resolve) => server.close(resolve));
  });

  it("skips a port something listens on", async () => {
    const freePort = await freePortAs("");
    const inRange = (port: number) => 18_500 + ((port - 18_500) % 1500);
    const first = await freePort();
    // The range is walked in order: the port after `first` would be next.
    const taken = await listenOn(inRange(first + 1));
    try {
      expect(await freePort()).toBe(inRange(first + 2));
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  });
});
