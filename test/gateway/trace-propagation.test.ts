import { createClient, createRouterTransport, type Interceptor } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { FilterService } from "../../gen/chat/v1/filter_pb.js";
import { LLMService } from "../../gen/chat/v1/llm_pb.js";
import { TokenService } from "../../gen/chat/v1/token_pb.js";
import { buildGateway } from "../../src/gateway/app.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createFilterService } from "../../src/services/filter/filter-service.js";
import { createTermMatcher } from "../../src/services/filter/terms.js";
import { createEchoBackend } from "../../src/services/llm/echo-backend.js";
import { createLlmService } from "../../src/services/llm/llm-service.js";
import { createMemoryQuotaStore } from "../../src/services/token/memory-store.js";
import { createTokenService } from "../../src/services/token/token-service.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
const parentId = "00f067aa0ba902b7";

/** The services of a chat, each call's trace headers kept in `seen`. */
function recordingUpstreams() {
  const seen: Record<string, string | null>[] = [];
  const record: Interceptor = (next) => (req) => {
    seen.push({
      method: req.method.name,
      traceparent: req.header.get("traceparent"),
      tracestate: req.header.get("tracestate"),
    });
    return next(req);
  };
  const transport = createRouterTransport(
    (router) => {
      router.service(FilterService, createFilterService({ matcher: createTermMatcher(["foo"]) }));
      router.service(
        TokenService,
        createTokenService({ store: createMemoryQuotaStore(), limit: 200, defaultCost: 50 }),
      );
      router.service(LLMService, createLlmService({ backend: createEchoBackend() }));
    },
    { router: { interceptors: [record] } },
  );
  return {
    seen,
    upstreams: {
      ...createInProcessUpstreams(),
      filter: createClient(FilterService, transport),
      token: createClient(TokenService, transport),
      llm: createClient(LLMService, transport),
    },
  };
}

describe("a chat's trace context, sent to every service", () => {
  it("continues the caller's traceparent in a span of its own and passes tracestate on unchanged", async () => {
    const { seen, upstreams } = recordingUpstreams();
    const app = await buildGateway({
      config: loadGatewayConfig({}),
      logger: createLogger("gateway", "silent"),
      upstreams,
    });
    try {
      const tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
      for (const url of ["/chat", "/chat/stream"]) {
        seen.length = 0;
        const res = await app.inject({
          method: "POST",
          url,
          headers: { traceparent: `00-${traceId}-${parentId}-01`, tracestate },
          payload: { user_id: "u1", text: "hi" },
        });
        expect(res.statusCode).toBe(200);
        expect(seen.map((call) => call.method)).toEqual([
          "Filter",
          "CheckAndInc",
          url === "/chat" ? "Generate" : "GenerateStream",
        ]);
        for (const call of seen) {
          expect(call.traceparent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
          expect(call.traceparent).not.toContain(parentId);
          expect(call.tracestate).toBe(tracestate);
        }
      }
    } finally {
      await app.close();
    }
  });
});
