import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { FastifyInstance } from "fastify";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** Latency buckets in seconds: sub-millisecond hops up to slow model calls. */
const buckets = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

/** A process's Prometheus registry, with Node's default process metrics. */
export function createMetricsRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return registry;
}

/** A counter on `registry`, or the one already registered under that name. */
export function counter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[] = [],
): Counter<L> {
  const existing = registry.getSingleMetric(name);
  if (existing !== undefined) return existing as Counter<L>;
  return new Counter({ name, help, labelNames, registers: [registry] });
}

function histogram<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[],
): Histogram<L> {
  const existing = registry.getSingleMetric(name);
  if (existing !== undefined) return existing as Histogram<L>;
  return new Histogram({ name, help, labelNames, buckets, registers: [registry] });
}

const codeName = (code: Code | undefined) =>
  code === undefined
    ? "ok"
    : (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();

/**
 * An interceptor that counts RPCs and their latency by service, method and
 * gRPC code. `side` is "server" for handlers, "client" for calls made.
 * Streams are measured until their last message.
 */
export function createRpcMetricsInterceptor(
  registry: Registry,
  side: "server" | "client",
): Interceptor {
  const handled = counter(
    registry,
    `rpc_${side}_handled_total`,
    `RPCs ${side === "server" ? "handled" : "made"}, by code`,
    ["service", "method", "code"],
  );
  const seconds = histogram(
    registry,
    `rpc_${side}_handling_seconds`,
    `RPC latency seen by the ${side}`,
    ["service", "method", "code"],
  );
  // Label children are looked up once per service, method and code, not hashed on every call.
  const children = new Map<
    string,
    { handled: Counter.Internal; seconds: Histogram.Internal<string> }
  >();
  const child = (service: string, method: string, code: string) => {
    const key = `${service}/${method}/${code}`;
    let found = children.get(key);
    if (found === undefined) {
      const labels = { service, method, code };
      found = { handled: handled.labels(labels), seconds: seconds.labels(labels) };
      children.set(key, found);
    }
    return found;
  };
  return (next) => async (req) => {
    const started = performance.now();
    const done = (err: unknown) => {
      const code = err === undefined ? "ok" : codeName(ConnectError.from(err).code);
      const metrics = child(req.service.typeName, req.method.name, code);
      metrics.handled.inc();
      metrics.seconds.observe((performance.now() - started) / 1000);
    };
    let res: Awaited<ReturnType<typeof next>>;
    try {
      res = await next(req);
    } catch (err) {
      done(err);
      throw err;
    }
    if (!res.stream) {
      done(undefined);
      return res;
    }
    const source = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* source;
          done(undefined);
        } catch (err) {
          done(err);
          throw err;
        }
      })(),
    };
  };
}

/**
 * Serves `GET /metrics` and counts every HTTP request by method, route
 * template (never the raw URL, so label values stay bounded) and status.
 */
export function registerHttpMetrics(app: FastifyInstance, registry: Registry): void {
  const requests = counter(registry, "http_requests_total", "HTTP requests, by route and status", [
    "method",
    "route",
    "status",
  ]);
  const seconds = histogram(registry, "http_request_duration_seconds", "HTTP request latency", [
    "method",
    "route",
    "status",
  ]);
  const children = new Map<
    string,
    { requests: Counter.Internal; seconds: Histogram.Internal<string> }
  >();
  app.addHook("onResponse", async (req, reply) => {
    const route = req.routeOptions.url ?? "unmatched";
    const key = `${req.method} ${route} ${reply.statusCode}`;
    let metrics = children.get(key);
    if (metrics === undefined) {
      const labels = { method: req.method, route, status: String(reply.statusCode) };
      metrics = { requests: requests.labels(labels), seconds: seconds.labels(labels) };
      children.set(key, metrics);
    }
    metrics.requests.inc();
    metrics.seconds.observe(reply.elapsedTime / 1000);
  });
  app.get("/metrics", async (_req, reply) =>
    reply.type(registry.contentType).send(await registry.metrics()),
  );
}

/**
 * Exposes numbers kept elsewhere (a queue's counts, say) as gauges read at
 * scrape time: `name{key="…"}` for each key of what `read` returns.
 */
export function registerGaugeSet(
  registry: Registry,
  name: string,
  help: string,
  label: string,
  read: () => Readonly<Record<string, number>>,
): void {
  if (registry.getSingleMetric(name) !== undefined) return;
  new Gauge({
    name,
    help,
    labelNames: [label],
    registers: [registry],
    collect() {
      for (const [key, value] of Object.entries(read())) this.set({ [label]: key }, value);
    },
  });
}
