/** One request of the soak's mix. */
export interface MixedRequest {
  /** What it is, as the load's counts name it. */
  readonly kind: string;
  readonly method: "GET" | "POST";
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body?: string;
  /** The status the gateway answers it with. */
  readonly status: number;
}

/**
 * The mix: 70 % chats that pass, 8 % blocked by the filter, 5 % bad JSON,
 * 3 % a wrong content type, 8 % history pages, 6 % quota reads, over
 * `users` users (a bounded set, so the quota store's size plateaus too).
 */
export function mixedRequest(users: number): MixedRequest {
  const user = `soak-${Math.floor(Math.random() * users)}`;
  const json = { "content-type": "application/json" };
  const chat = (kind: string, text: string, status: number) => ({
    kind,
    method: "POST" as const,
    path: "/chat",
    headers: json,
    body: JSON.stringify({ user_id: user, text }),
    status,
  });
  const roll = Math.random();
  // Hex, whose letters never spell the banned term "foo" (base 36's did, once in ~5,000 chats).
  if (roll < 0.7) return chat("chat", `Hello   soak   ${Math.random().toString(16).slice(2)}`, 200);
  if (roll < 0.78) return chat("blocked chat", "this has foo inside", 400);
  if (roll < 0.83) {
    return {
      kind: "bad JSON",
      method: "POST",
      path: "/chat",
      headers: json,
      body: "{not json",
      status: 400,
    };
  }
  if (roll < 0.86) {
    const headers = { "content-type": "text/plain" };
    return { kind: "text/plain", method: "POST", path: "/chat", headers, body: "hi", status: 415 };
  }
  if (roll < 0.94) {
    const path = `/history?user_id=${user}&page_size=20`;
    return { kind: "history page", method: "GET", path, headers: {}, status: 200 };
  }
  return {
    kind: "quota read",
    method: "GET",
    path: `/quota?user_id=${user}`,
    headers: {},
    status: 200,
  };
}

/** What the load saw. */
export interface LoadResult {
  readonly total: number;
  readonly statuses: Record<string, number>;
  /**
   * Answers with another status than the request's kind gets ("history page
   * 404", "chat 429"): a mix the gateway does not serve as meant.
   */
  readonly unexpected: Record<string, number>;
  /** Requests that got no HTTP answer, by reason. */
  readonly errors: Record<string, number>;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

const percentile = (sorted: number[], p: number) =>
  sorted.length === 0
    ? Number.NaN
    : (sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] as number);

/**
 * A steady load: `workers` loops, each starting one request every
 * workers / rate seconds (evenly spaced, not in bursts), until `seconds` pass.
 */
export async function runSteadyLoad(options: {
  readonly url: string;
  readonly rate: number;
  readonly workers: number;
  readonly seconds: number;
  readonly users: number;
}): Promise<LoadResult> {
  const intervalMs = (options.workers / options.rate) * 1000;
  const end = Date.now() + options.seconds * 1000;
  const latencies: number[] = [];
  const statuses: Record<string, number> = {};
  const errors: Record<string, number> = {};
  const unexpected: Record<string, number> = {};
  const worker = async (offsetMs: number) => {
    await new Promise((r) => setTimeout(r, offsetMs));
    let next = performance.now();
    while (Date.now() < end) {
      const { kind, method, path, headers, body, status } = mixedRequest(options.users);
      const started = performance.now();
      try {
        const res = await fetch(`${options.url}${path}`, {
          method,
          headers,
          ...(body === undefined ? {} : { body }),
          signal: AbortSignal.timeout(30_000),
        });
        await res.arrayBuffer();
        statuses[res.status] = (statuses[res.status] ?? 0) + 1;
        if (res.status !== status) {
          const key = `${kind} ${res.status}`;
          unexpected[key] = (unexpected[key] ?? 0) + 1;
        }
        latencies.push(performance.now() - started);
      } catch (err) {
        const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).name;
        errors[cause] = (errors[cause] ?? 0) + 1;
      }
      next += intervalMs;
      const wait = next - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  };
  await Promise.all(
    Array.from({ length: options.workers }, (_, i) => worker((i * intervalMs) / options.workers)),
  );
  latencies.sort((a, b) => a - b);
  return {
    total: latencies.length + Object.values(errors).reduce((a, b) => a + b, 0),
    statuses,
    unexpected,
    errors,
    p50Ms: percentile(latencies, 0.5),
    p99Ms: percentile(latencies, 0.99),
  };
}
