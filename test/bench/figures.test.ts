import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import autocannon from "autocannon";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { autocannonFigures, failedLoads, wrkFigures } from "../../bench/figures.js";

describe("make bench's figures", () => {
  // Every other chat refused, as a gateway with a rate limit or a failing service answers.
  let server: Server;
  let url: string;
  beforeAll(async () => {
    let n = 0;
    server = createServer((req, res) => {
      req.resume();
      req.once("end", () => {
        n++;
        res.writeHead(n % 2 === 0 ? 429 : 200, { "content-type": "application/json" });
        res.end("{}");
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  it("count 2xx answers only in requests/s, and fail the load that got others", async () => {
    const result = await autocannon({ url, connections: 2, amount: 400, method: "POST" });
    const figures = autocannonFigures(result);
    expect(figures.total).toBe(400);
    expect(figures.non2xx).toBe(200);
    expect(figures.requestsPerSec).toBeCloseTo(result.requests.average / 2, 6);
    expect(failedLoads({ chain: figures })).toEqual([
      "chain: 200 non-2xx answers and 0 requests without an answer",
    ]);
  });

  it("count a timeout once among the requests without an answer", () => {
    const result = {
      requests: { average: 0, total: 0 },
      latency: { p50: 0, p90: 0, p99: 0 },
      "2xx": 0,
      non2xx: 0,
      errors: 3,
      timeouts: 3,
    } as unknown as autocannon.Result;
    expect(autocannonFigures(result).errors).toBe(3);
  });

  it("take wrk's status errors out of its requests/s", () => {
    const figures = wrkFigures({ total: 1000, us: 2_000_000, non2xx: 400, errors: 0, p99: 9000 });
    expect(figures.requestsPerSec).toBe(300);
    expect(figures.p99).toBe(9);
    expect(failedLoads({ reference: figures, ceiling: { ...figures, non2xx: 0 } })).toEqual([
      "reference: 400 non-2xx answers and 0 requests without an answer",
    ]);
  });

  it("pass loads that got only 2xx answers, and a load not run", () => {
    const ok = wrkFigures({ total: 10, us: 1_000_000, non2xx: 0, errors: 0 });
    expect(failedLoads({ chain: ok, reference: undefined })).toEqual([]);
  });
});
