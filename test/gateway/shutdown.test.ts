import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createEchoBackend } from "../../src/services/llm/echo-backend.js";
import { parseSse } from "../fixtures/sse.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

let app: FastifyInstance | undefined;
afterEach(() => app?.close());

describe("gateway shutdown", () => {
  it("lets a stream in flight finish, then closes its kept-alive connection at once", async () => {
    app = await buildGateway({
      config: loadGatewayConfig({}),
      logger: createLogger("gateway", "silent"),
      upstreams: createInProcessUpstreams({ llm: createEchoBackend({ chunkDelayMs: 100 }) }),
    });
    const url = await app.listen({ host: "127.0.0.1", port: 0 });
    // fetch keeps its connection alive: the stream's response is written by its handler, not Fastify.
    const res = await fetch(`${url}/chat/stream`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "s", text: "one two three four five" }),
    });
    const closing = app.close();
    const events = parseSse(await res.text());
    expect(events.at(-1)).toMatchObject({
      event: "done",
      data: { reply: "Echo: one two three four five" },
    });
    const ended = Date.now();
    await closing;
    app = undefined;
    // Not held until the connection's keep-alive timeout (72 s).
    expect(Date.now() - ended).toBeLessThan(2_000);
  });
});
