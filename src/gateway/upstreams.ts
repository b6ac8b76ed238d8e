import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FilterService } from "../../gen/chat/v1/filter_pb.js";
import { HistoryService } from "../../gen/chat/v1/history_pb.js";
import { LLMService } from "../../gen/chat/v1/llm_pb.js";
import { TokenService } from "../../gen/chat/v1/token_pb.js";
import type { GatewayConfig } from "../lib/config.js";

/** The typed clients of the services the gateway calls. */
export interface Upstreams {
  readonly filter: Client<typeof FilterService>;
  readonly token: Client<typeof TokenService>;
  readonly llm: Client<typeof LLMService>;
  readonly history: Client<typeof HistoryService>;
}

/**
 * Makes one gRPC (HTTP/2) transport per service, once. Every call has a
 * deadline; an idle connection is dropped well before the server's session
 * timeout, and a broken one is replaced on the next call, so a restarted
 * service is used again without restarting the gateway.
 */
export function createUpstreams(config: GatewayConfig): Upstreams {
  const transport = (baseUrl: string, defaultTimeoutMs: number) =>
    createGrpcTransport({
      baseUrl,
      defaultTimeoutMs,
      idleConnectionTimeoutMs: 60_000,
      pingIntervalMs: 30_000,
      pingTimeoutMs: 5_000,
    });
  return {
    filter: createClient(FilterService, transport(config.filterUrl, config.filterTimeoutMs)),
    token: createClient(TokenService, transport(config.tokenUrl, config.tokenTimeoutMs)),
    llm: createClient(LLMService, transport(config.llmUrl, config.llmTimeoutMs)),
    history: createClient(HistoryService, transport(config.historyUrl, config.historyTimeoutMs)),
  };
}
