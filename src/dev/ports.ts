import net from "node:net";

/** Whether something can listen on `port` on loopback right now (0 asks the system for one). */
function tryListen(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(undefined));
    server.listen(port, "127.0.0.1", () => {
      const bound = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(bound));
    });
  });
}

// Test workers run side by side: a port handed out by one could be bound by
// another's process before the first one's process binds it. Each worker
// therefore hands out ports from a range of its own, below the system's
// ephemeral range (32768 and up on Linux) so outgoing connections never hold them.
const rangeSize = 1500;
const rangeBase = 20_000;
const worker = Number(process.env.VITEST_POOL_ID ?? 0);
let next = Math.floor(Math.random() * rangeSize);

/** A loopback port nobody listens on right now (for tests, benchmarks and local runs). */
export async function freePort(): Promise<number> {
  if (!(worker >= 1 && worker <= 8)) {
    const port = await tryListen(0);
    if (port === undefined) throw new Error("no free loopback port");
    return port;
  }
  for (let tries = 0; tries < rangeSize; tries++) {
    const port = rangeBase + (worker - 1) * rangeSize + (next++ % rangeSize);
    if ((await tryListen(port)) !== undefined) return port;
  }
  throw new Error(`no free port in test worker ${worker}'s range`);
}
