import { Counter, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import {
  counter,
  LabeledCounter,
  LabeledHistogram,
  latencyBuckets,
} from "../../src/lib/metrics.js";

const rpcLabels = ["service", "method", "code"] as const;
const calls = [
  [{ service: "chat.v1.FilterService", method: "Filter", code: "ok" }, 0.0004],
  [{ service: "chat.v1.FilterService", method: "Filter", code: "ok" }, 0.003],
  [{ service: "chat.v1.TokenService", method: "CheckAndInc", code: "resource_exhausted" }, 0.012],
  [{ service: "chat.v1.FilterService", method: "Filter", code: "ok" }, 0.0005],
  [{ service: "chat.v1.LLMService", method: "Generate", code: "ok" }, 45],
  [{ service: "chat.v1.FilterService", method: "Filter", code: "invalid_argument" }, 0.25],
] as const;

describe("LabeledCounter and LabeledHistogram", () => {
  it("print exactly what prom-client's Counter and Histogram print for the same calls", async () => {
    const stock = new Registry();
    const stockCount = new Counter({
      name: "rpc_handled_total",
      help: "RPCs, by code",
      labelNames: rpcLabels,
      registers: [stock],
    });
    const stockSeconds = new Histogram({
      name: "rpc_seconds",
      help: "RPC latency",
      labelNames: rpcLabels,
      buckets: [...latencyBuckets],
      registers: [stock],
    });
    const ours = new Registry();
    const count = counter(ours, "rpc_handled_total", "RPCs, by code", rpcLabels);
    const seconds = new LabeledHistogram("rpc_seconds", "RPC latency", rpcLabels);
    ours.registerMetric(seconds as never);
    for (const [labels, value] of calls) {
      stockCount.inc(labels);
      stockSeconds.observe(labels, value);
      count.inc(labels);
      // Half through kept children, as the hot paths do.
      if (value < 0.01) seconds.child(labels).observe(value);
      else seconds.observe(labels, value);
    }
    stockCount.inc({ service: "x", method: "y", code: "ok" }, 2.5);
    count.child({ service: "x", method: "y", code: "ok" }).inc(2.5);
    const printed = await ours.metrics();
    expect(printed).toBe(await stock.metrics());
    expect(printed).toContain(
      'rpc_seconds_bucket{le="0.0005",service="chat.v1.FilterService",method="Filter",code="ok"} 2',
    );
    expect(printed).toContain(
      'rpc_handled_total{service="chat.v1.FilterService",method="Filter",code="ok"} 3',
    );
    // As JSON too, but for prom-client's empty exemplar fields.
    const withoutExemplars = (metrics: Awaited<ReturnType<Registry["getMetricsAsJSON"]>>) =>
      metrics.map((metric) => ({
        ...metric,
        values: metric.values.map((value) => {
          const { exemplar: _, ...rest } = value as typeof value & { exemplar?: unknown };
          return rest;
        }),
      }));
    expect(withoutExemplars(await ours.getMetricsAsJSON())).toEqual(
      withoutExemplars(await stock.getMetricsAsJSON()),
    );
  });

  it("keeps one counter per label set, however it is reached, and returns it by name", async () => {
    const registry = new Registry();
    const chats = counter(registry, "chats_total", "Chats", ["outcome"]);
    expect(counter(registry, "chats_total", "Chats", ["outcome"])).toBe(chats);
    const ok = chats.child({ outcome: "ok" });
    ok.inc();
    chats.inc({ outcome: "ok" });
    chats.child({ outcome: "ok" }).inc(3);
    chats.inc({ outcome: "quota_exceeded" });
    const printed = await registry.metrics();
    expect(printed).toContain('chats_total{outcome="ok"} 5');
    expect(printed).toContain('chats_total{outcome="quota_exceeded"} 1');
    registry.resetMetrics();
    ok.inc();
    expect(await registry.metrics()).toContain('chats_total{outcome="ok"} 1');
  });

  it("refuses a label the metric does not have, a negative count and a non-finite value", () => {
    const count = new LabeledCounter("c_total", "c", ["outcome"]);
    expect(() => count.inc({ outcome: "ok", extra: "x" } as never)).toThrow(/no label extra/);
    expect(() => count.inc({ outcome: "ok" }, -1)).toThrow(/only goes up/);
    const seconds = new LabeledHistogram("s", "s", ["route"]);
    expect(() => seconds.observe({ route: "/chat" }, Number.NaN)).toThrow(TypeError);
  });

  it("tells calls of minutes apart: a streamed reply of 45 s from one of 4 minutes", async () => {
    const registry = new Registry();
    const seconds = new LabeledHistogram("rpc_seconds", "RPC latency", ["method"]);
    registry.registerMetric(seconds as never);
    seconds.observe({ method: "GenerateStream" }, 45);
    seconds.observe({ method: "GenerateStream" }, 240);
    const text = await registry.metrics();
    const bucket = (le: string) =>
      text.match(
        new RegExp(`^rpc_seconds_bucket\\{le="${le}",method="GenerateStream"\\} (\\d+)$`, "m"),
      )?.[1];
    expect([bucket("30"), bucket("60"), bucket("120"), bucket("300"), bucket("600")]).toEqual([
      "0",
      "1",
      "1",
      "2",
      "2",
    ]);
  });
});
