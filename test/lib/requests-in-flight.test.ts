import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { RequestsInFlight } from "../../src/lib/requests-in-flight.js";

let server: http.Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r) ?? r(undefined));
  server = undefined;
});

/** An HTTP/1.1 server counting with `inFlight`; it answers `/slow` after 100 ms and never answers `/hang`. */
async function start(inFlight: RequestsInFlight): Promise<number> {
  server = http.createServer((req, res) => {
    if (req.url === "/slow") setTimeout(() => res.end("slow"), 100);
    else if (req.url !== "/hang") res.end("ok");
  });
  server.on("connection", (socket) => inFlight.open(socket));
  server.on("request", (req: http.IncomingMessage, res: http.ServerResponse) =>
    inFlight.begin(req.socket, res),
  );
  await new Promise<void>((r) => server?.listen(0, "127.0.0.1", r));
  return (server.address() as AddressInfo).port;
}

const until = async (check: () => boolean) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
};

describe("requests in flight per connection", () => {
  it("keeps no connection whose client went away while its request was in flight", async () => {
    const inFlight = new RequestsInFlight();
    const port = await start(inFlight);
    const requests = Array.from({ length: 20 }, () => {
      const req = http.get({ port, host: "127.0.0.1", path: "/hang", agent: false });
      const done = new Promise((resolve) => req.on("error", (err) => resolve(err.message)));
      return { abort: () => req.destroy(), done };
    });
    await until(() => inFlight.size === 20);
    expect(inFlight.size).toBe(20);
    for (const { abort } of requests) abort();
    expect(await Promise.all(requests.map((r) => r.done))).toEqual(
      Array(20).fill("socket hang up"),
    );
    await until(() => inFlight.size === 0);
    expect(inFlight.size).toBe(0);
  });

  it("ends idle connections when draining, and busy ones after their response", async () => {
    const inFlight = new RequestsInFlight();
    const port = await start(inFlight);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 2 });
    const get = (path: string) =>
      new Promise<string>((resolve, reject) => {
        http
          .get({ port, host: "127.0.0.1", path, agent }, (res) => {
            let body = "";
            res.on("data", (chunk) => {
              body += chunk;
            });
            res.on("end", () => resolve(body));
          })
          .on("error", reject);
      });
    try {
      expect(await Promise.all([get("/"), get("/")])).toEqual(["ok", "ok"]);
      expect(inFlight.size).toBe(2);
      const arrived = new Promise((r) => server?.once("request", r));
      const slow = get("/slow");
      await arrived;
      inFlight.drain();
      // The idle connection ends at once, the busy one after its answer.
      await until(() => inFlight.size === 1);
      expect(inFlight.size).toBe(1);
      expect(await slow).toBe("slow");
      await until(() => inFlight.size === 0);
      expect(inFlight.size).toBe(0);
    } finally {
      agent.destroy();
    }
  });
});
