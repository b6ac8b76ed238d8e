/**
 * Quota micro-benchmark: CheckAndInc (a store's atomic check-and-charge with
 * a charge id, as the gateway sends it) per second, for the memory and the
 * redis store, measured in the same run with the same load.
 *
 *   make bench-quota                      # 5 s per store, 64 in flight
 *   npx tsx bench/quota-bench.ts --seconds 10 --concurrency 128
 *
 * The redis store uses REDIS_URL (default redis://127.0.0.1:6379) under a
 * key prefix of its own, deleted afterwards. Results go to stdout and to
 * bench/results/quota-<time>.json.
 */
import { randomUUID } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import { Redis } from "ioredis";
import { loadTokenConfig } from "../src/lib/config.js";
import { windowAt } from "../src/services/token/clock.js";
import { createMemoryQuotaStore } from "../src/services/token/memory-store.js";
import type { QuotaStore } from "../src/services/token/quota-store.js";
import { createRedisQuotaStore } from "../src/services/token/redis-store.js";
import { optionsOrExit, quotaBenchOptions } from "./options.js";

const { seconds, concurrency, users } = optionsOrExit("make bench-quota", () =>
  quotaBenchOptions(process.argv.slice(2)),
);

interface Result {
  readonly store: string;
  readonly ops: number;
  readonly opsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

const percentile = (sorted: Float64Array, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0;

/** Runs `concurrency` loops of charges against `store` for `ms`; returns what was done. */
async function load(store: QuotaStore, ms: number) {
  const window = windowAt(new Date());
  const latencies: number[] = [];
  let n = 0;
  const end = performance.now() + ms;
  const worker = async () => {
    while (performance.now() < end) {
      const i = n++;
      const started = performance.now();
      await store.charge({
        userId: `bench-${i % users}`,
        window,
        cost: 1,
        limit: Number.MAX_SAFE_INTEGER,
        chargeId: `c${i}`,
      });
      latencies.push(performance.now() - started);
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { latencies, elapsedMs: performance.now() - started };
}

async function measure(name: string, store: QuotaStore): Promise<Result> {
  await load(store, 500); // warm-up: JIT, connections, script cache
  const { latencies, elapsedMs } = await load(store, seconds * 1000);
  const sorted = Float64Array.from(latencies).sort();
  return {
    store: name,
    ops: latencies.length,
    opsPerSecond: Math.round((latencies.length / elapsedMs) * 1000),
    p50Ms: Number(percentile(sorted, 0.5).toFixed(3)),
    p99Ms: Number(percentile(sorted, 0.99).toFixed(3)),
  };
}

async function deletePrefix(url: string, prefix: string) {
  const admin = new Redis(url);
  let cursor = "0";
  do {
    const [next, keys] = await admin.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 5000);
    cursor = next;
    if (keys.length > 0) await admin.unlink(...keys);
  } while (cursor !== "0");
  admin.disconnect();
}

async function main(): Promise<number> {
  const { redisUrl } = loadTokenConfig();
  console.log(
    `quota bench: ${seconds} s per store, ${concurrency} charges in flight, ${users} users, ` +
      `${os.cpus().length} CPUs, Node ${process.version}`,
  );
  const results: Result[] = [];
  const memory = createMemoryQuotaStore();
  results.push(await measure("memory", memory));
  await memory.close();

  const keyPrefix = `chatmesh-bench:${randomUUID()}:`;
  const redis = createRedisQuotaStore({ url: redisUrl, keyPrefix, commandTimeoutMs: 5_000 });
  let redisFailed = false;
  try {
    await redis.connected(3_000);
    results.push(await measure("redis", redis));
  } catch (err) {
    redisFailed = true;
    console.error(`redis store not measured: ${(err as Error).message} (${redisUrl})`);
  } finally {
    await redis.close();
    if (!redisFailed) await deletePrefix(redisUrl, keyPrefix);
  }

  console.log("\nstore    CheckAndInc/s     p50 ms    p99 ms       ops");
  for (const r of results) {
    console.log(
      `${r.store.padEnd(8)} ${String(r.opsPerSecond).padStart(13)} ${r.p50Ms.toFixed(3).padStart(10)}` +
        ` ${r.p99Ms.toFixed(3).padStart(9)} ${String(r.ops).padStart(9)}`,
    );
  }
  const dir = new URL("./results/", import.meta.url);
  await mkdir(dir, { recursive: true });
  const file = new URL(`quota-${new Date().toISOString().replace(/[:.]/g, "-")}.json`, dir);
  const report = { at: new Date().toISOString(), seconds, concurrency, users, redisUrl, results };
  await writeFile(file, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\nwritten to ${file.pathname}`);
  return redisFailed ? 1 : 0;
}

process.exitCode = await main();
