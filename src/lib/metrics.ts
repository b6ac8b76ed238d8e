import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { Counter, collectDefaultMetrics, Gauge, type Metric, Registry } from "prom-client";

/**
 * Latency buckets in seconds: sub-millisecond hops up to model calls and
 * streamed replies of minutes (LLM_TIMEOUT_MS is 60 s by default, up to an
 * hour): with 30 s as the last bucket, every longer call read as 30 s in a
 * quantile.
 */
export const latencyBuckets = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
  600,
];

/** A process's Prometheus registry, with Node's default process metrics. */
export function createMetricsRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return registry;
}

/** One label set's counter: a plain number. */
export interface CounterChild {
  inc(value?: number): void;
}

/** One label set's histogram: plain numbers per bucket. */
export interface HistogramChild {
  observe(value: number): void;
}

/**
 * What prom-client's Registry reads of a metric: its name, help and type,
 * and `get()`, whose values it prints (for `/metrics`) or returns (as JSON).
 */
interface RegistryMetric {
  name: string;
  readonly help: string;
  readonly type: "counter" | "histogram";
  readonly aggregator: "sum";
  get(): Promise<Exposed>;
  reset(): void;
}

interface Exposed {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "histogram";
  readonly aggregator: "sum";
  readonly values: {
    readonly labels: Record<string, string | number>;
    readonly value: number;
    readonly metricName?: string;
  }[];
}

/** The key of a label set: its values in the metric's label order. */
const keyOf = (labelNames: readonly string[], labels: Readonly<Record<string, string>>) =>
  labelNames.length === 1
    ? (labels[labelNames[0] as string] ?? "")
    : labelNames.map((name) => labels[name] ?? "").join("\u0000");

/** The label set as printed: only the metric's own labels, each a string. */
function checkedLabels(
  metric: string,
  labelNames: readonly string[],
  labels: Readonly<Record<string, string>>,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of Object.keys(labels)) {
    if (!labelNames.includes(name)) {
      throw new Error(`metric ${metric} has no label ${name} (labels: ${labelNames.join(", ")})`);
    }
  }
  for (const name of labelNames) {
    const value = labels[name];
    if (value !== undefined) out[name] = String(value);
  }
  return out;
}

/**
 * A metric by label set, printed as prom-client prints its own. Each label
 * set is looked up once, by its values, and counts in plain numbers:
 * prom-client checks and hashes the labels on every update, which for the
 * gateway's counters and latency histograms was some 10 % of its CPU per
 * chat under `make bench` (and 2-3 µs per call in each service).
 */
abstract class LabeledMetric<L extends string, C> implements RegistryMetric {
  abstract readonly type: "counter" | "histogram";
  readonly aggregator = "sum" as const;
  protected readonly children = new Map<string, C>();

  constructor(
    public name: string,
    readonly help: string,
    readonly labelNames: readonly L[],
  ) {}

  /** The figures of a new label set. */
  protected abstract made(labels: Readonly<Record<string, string>>): C;
  /** What the registry prints of the label sets seen so far. */
  protected abstract values(): Exposed["values"];
  abstract reset(): void;

  protected childOf(labels: Readonly<Record<L, string>>): C {
    const key = keyOf(this.labelNames, labels);
    let child = this.children.get(key);
    if (child === undefined) {
      child = this.made(checkedLabels(this.name, this.labelNames, labels));
      this.children.set(key, child);
    }
    return child;
  }

  async get(): Promise<Exposed> {
    const { name, help, type, aggregator } = this;
    return { name, help, type, aggregator, values: this.values() };
  }
}

/** A counter by label set. */
export class LabeledCounter<L extends string = string> extends LabeledMetric<L, Count> {
  readonly type = "counter" as const;

  /** The counter of one label set, to keep and count on. */
  child(labels: Readonly<Record<L, string>>): CounterChild {
    return this.childOf(labels);
  }

  inc(labels: Readonly<Record<L, string>>, value = 1): void {
    this.childOf(labels).inc(value);
  }

  protected made(labels: Readonly<Record<string, string>>): Count {
    return new Count(labels);
  }

  protected values(): Exposed["values"] {
    return [...this.children.values()].map(({ labels, value }) => ({
      labels: { ...labels },
      value,
    }));
  }

  reset(): void {
    for (const child of this.children.values()) child.value = 0;
  }
}

class Count implements CounterChild {
  value = 0;
  constructor(readonly labels: Readonly<Record<string, string>>) {}
  inc(value = 1): void {
    if (!(value >= 0)) throw new Error(`a counter only goes up (inc by ${value})`);
    this.value += value;
  }
}

/** A latency histogram by label set, with `upperBounds` as its buckets. */
export class LabeledHistogram<L extends string = string> extends LabeledMetric<L, Observed> {
  readonly type = "histogram" as const;

  constructor(
    name: string,
    help: string,
    labelNames: readonly L[],
    readonly upperBounds: readonly number[] = latencyBuckets,
  ) {
    super(name, help, labelNames);
  }

  /** The histogram of one label set, to keep and observe into. */
  child(labels: Readonly<Record<L, string>>): HistogramChild {
    return this.childOf(labels);
  }

  observe(labels: Readonly<Record<L, string>>, value: number): void {
    this.childOf(labels).observe(value);
  }

  protected made(labels: Readonly<Record<string, string>>): Observed {
    return new Observed(labels, this.upperBounds);
  }

  protected values(): Exposed["values"] {
    const values: Exposed["values"] = [];
    const bucket = `${this.name}_bucket`;
    for (const { labels, counts, sum, count } of this.children.values()) {
      let cumulative = 0;
      this.upperBounds.forEach((le, i) => {
        cumulative += counts[i] as number;
        values.push({ labels: { le, ...labels }, value: cumulative, metricName: bucket });
      });
      values.push(
        { labels: { le: "+Inf", ...labels }, value: count, metricName: bucket },
        { labels: { ...labels }, value: sum, metricName: `${this.name}_sum` },
        { labels: { ...labels }, value: count, metricName: `${this.name}_count` },
      );
    }
    return values;
  }

  reset(): void {
    for (const child of this.children.values()) {
      child.counts.fill(0);
      child.sum = 0;
      child.count = 0;
    }
  }
}

class Observed implements HistogramChild {
  /** Observations per bucket (not cumulative); those above the last bound only in `count`. */
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(
    readonly labels: Readonly<Record<string, string>>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = bounds.map(() => 0);
  }
  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`not a finite number: ${value}`);
    this.sum += value;
    this.count += 1;
    const bounds = this.bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= (bounds[i] as number)) {
        (this.counts[i] as number) += 1;
        return;
      }
    }
  }
}

/** A counter on `registry`, or the one already registered under that name. */
export function counter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[] = [],
): LabeledCounter<L> {
  const existing = registry.getSingleMetric(name);
  if (existing instanceof LabeledCounter) return existing as LabeledCounter<L>;
  const made = new LabeledCounter(name, help, labelNames);
  registry.registerMetric(made as unknown as Metric);
  return made;
}

/** The latency histogram `name` of `registry` (latencyBuckets, in seconds), made on first use. */
export function histogram<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[],
): LabeledHistogram<L> {
  const existing = registry.getSingleMetric(name);
  if (existing instanceof LabeledHistogram) return existing as LabeledHistogram<L>;
  const made = new LabeledHistogram(name, help, labelNames);
  registry.registerMetric(made as unknown as Metric);
  return made;
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
  // Label children are looked up once per service, method and code, not on
  // every call: those of a method's successes by the method itself.
  const children = new Map<string, { handled: CounterChild; seconds: HistogramChild }>();
  const child = (service: string, method: string, code: string) => {
    const key = `${service}/${method}/${code}`;
    let found = children.get(key);
    if (found === undefined) {
      const labels = { service, method, code };
      found = { handled: handled.child(labels), seconds: seconds.child(labels) };
      children.set(key, found);
    }
    return found;
  };
  const succeeded = new WeakMap<object, { handled: CounterChild; seconds: HistogramChild }>();
  const okChild = (req: { service: { typeName: string }; method: { name: string } }) => {
    let found = succeeded.get(req.method);
    if (found === undefined) {
      found = child(req.service.typeName, req.method.name, "ok");
      succeeded.set(req.method, found);
    }
    return found;
  };
  // Not async itself: callThen is the one promise of the call.
  return (next) => (req) => {
    const started = performance.now();
    return callThen(next, req, (err) => {
      const metrics =
        err === undefined
          ? okChild(req)
          : child(req.service.typeName, req.method.name, codeName(ConnectError.from(err).code));
      metrics.handled.inc();
      metrics.seconds.observe((performance.now() - started) / 1000);
    });
  };
}

type Next = Parameters<Interceptor>[0];

/**
 * Makes the call through `next` and tells `done` once how it ended: its
 * error, or undefined. A stream ends when its last message was read or it
 * failed (a caller that cancels through its signal makes it fail), or as
 * Canceled if the caller returns its iterator early. Connect's clients do
 * not: a stream a caller merely stops reading is not told at all.
 */
export async function callThen(
  next: Next,
  req: Parameters<Next>[0],
  done: (err: unknown) => void,
): ReturnType<Next> {
  let res: Awaited<ReturnType<Next>>;
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
      let ended = false;
      let failure: unknown;
      try {
        yield* source;
        ended = true;
      } catch (err) {
        ended = true;
        failure = err;
        throw err;
      } finally {
        // An error made only for a stream its caller left: none for the others.
        done(ended ? failure : new ConnectError("the caller stopped reading", Code.Canceled));
      }
    })(),
  };
}

/**
 * The status a request is counted and logged with when its client went away
 * before the answer was sent (nginx's "client closed request").
 */
export const clientClosedStatus = 499;

/** Counts one request: its status (or clientClosedStatus) and how long it took. */
export type CountRequest = (req: FastifyRequest, status: number, elapsedMs: number) => void;

/**
 * Serves `GET /metrics` and counts every HTTP request that was answered by
 * method, route template (never the raw URL, so label values stay bounded)
 * and status. Returns the counting, for requests whose client went away
 * before their answer (a response that never finishes: onResponse does not
 * run for it).
 */
export function registerHttpMetrics(app: FastifyInstance, registry: Registry): CountRequest {
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
  const children = new Map<string, { requests: CounterChild; seconds: HistogramChild }>();
  const count: CountRequest = (req, status, elapsedMs) => {
    const route = req.routeOptions.url ?? "unmatched";
    const key = `${req.method} ${route} ${status}`;
    let metrics = children.get(key);
    if (metrics === undefined) {
      const labels = { method: req.method, route, status: String(status) };
      metrics = { requests: requests.child(labels), seconds: seconds.child(labels) };
      children.set(key, metrics);
    }
    metrics.requests.inc();
    metrics.seconds.observe(elapsedMs / 1000);
  };
  app.addHook("onResponse", async (req, reply) => {
    // Run on an error of an unfinished response too: counted by its caller then.
    if (reply.raw.writableFinished) count(req, reply.statusCode, reply.elapsedTime);
  });
  app.get("/metrics", async (_req, reply) =>
    reply.type(registry.contentType).send(await registry.metrics()),
  );
  return count;
}

/**
 * Exposes counts kept elsewhere (a queue's, say), read at scrape time, as
 * one counter: `name{label="…"}` for each key of what `read` returns. The
 * counts must only grow, as a counter's.
 */
export function registerCountersRead(
  registry: Registry,
  name: string,
  help: string,
  label: string,
  read: () => Readonly<Record<string, number>>,
): void {
  if (registry.getSingleMetric(name) !== undefined) return;
  new Counter({
    name,
    help,
    labelNames: [label],
    registers: [registry],
    collect() {
      this.reset();
      for (const [key, value] of Object.entries(read())) this.inc({ [label]: key }, value);
    },
  });
}

/** Exposes a number kept elsewhere, read at scrape time, as a gauge. */
export function registerGaugeRead(
  registry: Registry,
  name: string,
  help: string,
  read: () => number,
): void {
  if (registry.getSingleMetric(name) !== undefined) return;
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read());
    },
  });
}
