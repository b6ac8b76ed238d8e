import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { Registry } from "prom-client";
import { FilterService } from "../../gen/chat/v1/filter_pb.js";
import { HistoryService } from "../../gen/chat/v1/history_pb.js";
import { LLMService } from "../../gen/chat/v1/llm_pb.js";
import { TokenService } from "../../gen/chat/v1/token_pb.js";
import {
  Health,
  HealthCheckResponse_ServingStatus as Status,
} from "../../gen/health/v1/health_pb.js";
import type { GatewayConfig } from "../lib/config.js";
import { createFastTransport } from "../lib/fast-transport.js";
import { createFramesTransport } from "../lib/frames-transport.js";
import { createLocalTransport } from "../lib/local-transport.js";
import { createRpcMetricsInterceptor } from "../lib/metrics.js";
import type { ReadyCheck } from "../lib/readiness.js";
import { retryRefusedStreams } from "../lib/refused-stream-retry.js";
import { createRotatingTransport } from "../lib/rotating-transport.js";
import type { LocalService } from "../lib/rpc-server.js";
import { withCancellation } from "../lib/unary-transport.js";

/** The typed clients of the services the gateway calls. */
export interface Upstreams {
  readonly filter: Client<typeof FilterService>;
  readonly token: Client<typeof TokenService>;
  readonly llm: Client<typeof LLMService>;
  readonly history: Client<typeof HistoryService>;
}

/** The services the gateway calls, by name. */
export type UpstreamName = keyof Upstreams;

/** Upstreams plus the readiness checks of their gRPC health services. */
export interface ConnectedUpstreams extends Upstreams {
  readonly readyChecks: Readonly<Record<string, ReadyCheck>>;
}

const readinessTimeoutMs = 500;

/**
 * Makes one transport per service, once, for unary calls as
 * UPSTREAM_PROTOCOL says: lean frames over one multiplexed connection
 * (`frames`, cleartext only), binary Connect over pooled HTTP/1.1
 * (`connect`, and `frames` over TLS) or gRPC over HTTP/2 (`grpc`); gRPC for
 * streams. Every call has a
 * deadline and carries the request's trace (`traceparent`, `x-request-id`);
 * an idle connection is dropped well before the server's session timeout, and
 * a broken one is replaced on the next call, so a restarted service is used
 * again without restarting the gateway; every UPSTREAM_MAX_CONNECTION_AGE_MS
 * new calls go to new connections, which reach replicas started since. A
 * service in `local` runs in the
 * gateway's process (`chatmesh all`) and is called there, its URL unused.
 */
export function createUpstreams(
  config: GatewayConfig,
  registry: Registry,
  /** UPSTREAM_CA_FILE's CA, trusted for https:// service URLs. */
  ca?: Buffer,
  local: Partial<Record<UpstreamName, LocalService>> = {},
): ConnectedUpstreams {
  const interceptors: Interceptor[] = [createRpcMetricsInterceptor(registry, "client")];
  const transport = (name: UpstreamName, baseUrl: string, defaultTimeoutMs: number): Transport => {
    const service = local[name];
    if (service !== undefined) {
      return createLocalTransport({ service, defaultTimeoutMs, interceptors });
    }
    return createRotatingTransport(
      () => remoteTransport(baseUrl, defaultTimeoutMs),
      config.upstreamMaxConnectionAgeMs,
    );
  };
  const remoteTransport = (baseUrl: string, defaultTimeoutMs: number): Transport => {
    const grpc = retryRefusedStreams(
      createGrpcTransport({
        baseUrl,
        defaultTimeoutMs,
        interceptors,
        idleConnectionTimeoutMs: 60_000,
        pingIntervalMs: 30_000,
        pingTimeoutMs: 5_000,
        ...(ca === undefined ? {} : { nodeOptions: { ca } }),
      }),
    );
    if (config.upstreamProtocol === "grpc") return withCancellation(grpc);
    // Frames are cleartext only: a TLS upstream gets the lean Connect path.
    if (config.upstreamProtocol === "frames" && baseUrl.startsWith("http:")) {
      return createFramesTransport({
        baseUrl,
        defaultTimeoutMs,
        interceptors,
        streamTransport: grpc,
      });
    }
    return createFastTransport({
      baseUrl,
      defaultTimeoutMs,
      interceptors,
      streamTransport: grpc,
      ...(ca === undefined ? {} : { ca }),
    });
  };
  const targets = [
    ["filter", FilterService, config.filterUrl, config.filterTimeoutMs],
    ["token", TokenService, config.tokenUrl, config.tokenTimeoutMs],
    ["llm", LLMService, config.llmUrl, config.llmTimeoutMs],
  ] as const;
  const transports = targets.map(([name, , url, timeout]) => transport(name, url, timeout));
  const readyChecks: Record<string, ReadyCheck> = {};
  targets.forEach(([name, service], i) => {
    const health = createClient(Health, transports[i] as Transport);
    readyChecks[name] = async () => {
      const { status } = await health.check(
        { service: service.typeName },
        { timeoutMs: readinessTimeoutMs },
      );
      if (status !== Status.SERVING) throw new Error(Status[status] ?? String(status));
    };
  });
  const [filter, token, llm] = transports as [Transport, Transport, Transport];
  return {
    filter: createClient(FilterService, filter),
    token: createClient(TokenService, token),
    llm: createClient(LLMService, llm),
    // History is not a readiness dependency: chats go on while it is down.
    history: createClient(
      HistoryService,
      transport("history", config.historyUrl, config.historyTimeoutMs),
    ),
    readyChecks,
  };
}
