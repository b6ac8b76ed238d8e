import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mixedRequest, runSteadyLoad } from "../../bench/soak-load.js";
import { startAllInOne } from "../../bench/stack.js";

const load = (url: string, rate = 100) =>
  runSteadyLoad({ url, rate, workers: 4, seconds: 2, users: 20 });

describe("make soak's load", () => {
  it("never sends a chat meant to pass with the banned term in it", () => {
    const passing = Array.from({ length: 100_000 }, () => mixedRequest(20)).filter(
      (r) => r.kind === "chat",
    );
    expect(passing.length).toBeGreaterThan(60_000);
    expect(passing.filter((r) => /foo/i.test(r.body ?? ""))).toEqual([]);
  });

  it("gets from the chain the status each request of its mix is meant to get", async () => {
    const chain = await startAllInOne({ CHATMESH_FROM_SOURCE: "1" });
    try {
      const result = await load(chain.url);
      expect(result.total).toBeGreaterThan(100);
      expect(result.errors).toEqual({});
      expect(result.unexpected).toEqual({});
    } finally {
      await chain.stop();
    }
  }, 60_000);

  describe("against a gateway that answers 200 to everything", () => {
    let server: Server;
    let url: string;
    beforeAll(async () => {
      server = createServer((req, res) => {
        req.resume();
        req.once("end", () => res.end("{}"));
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    afterAll(() => new Promise((resolve) => server.close(resolve)));

    it("counts the answers a request of its kind does not get", async () => {
      // 400 requests: each kind of the mix is among them but once in millions of runs.
      const result = await load(url, 200);
      expect(result.statuses).toEqual({ 200: result.total });
      expect(Object.keys(result.unexpected).sort()).toEqual([
        "bad JSON 200",
        "blocked chat 200",
        "text/plain 200",
      ]);
    });
  });
});
