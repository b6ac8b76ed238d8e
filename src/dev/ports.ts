import net from "node:net";

/** The port if something can listen on it on loopback right now. */
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

// Every port is handed out below the system's ephemeral range (32768 and up
// on Linux). A port from that range (what listening on port 0 gives) can be
// taken before its process binds it by the source port of an outgoing
// connection, and a health probe of it can even connect to itself (a TCP
// self-connect) and wait for an answer forever. Test workers run side by
// side: a port handed out by one could be bound by another's process before
// the first one's process binds it, so each worker has a range of its own;
// anything else (benchmarks, a single process) uses the range below theirs.
const rangeSize = 1500;
const rangeBase = 20_000;
const poolId = Number(process.env.VITEST_POOL_ID ?? 0);
const worker = poolId >= 1 && poolId <= 8 ? poolId : 0;
let next = Math.floor(Math.random() * rangeSize);

/** A loopback port nobody listens on right now (for tests, benchmarks and local runs). */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < rangeSize; tries++) {
    const port = rangeBase + (worker - 1) * rangeSize + (next++ % rangeSize);
    if ((await tryListen(port)) !== undefined) return port;
  }
  throw new Error(`no free loopback port in ${rangeBase + (worker - 1) * rangeSize}+${rangeSize}`);
}
