/**
 * The V8 heap flag the four services run with: a young generation of at most
 * 3 × 4 MB instead of V8's 3 × 16 MB. They keep little per call, so under
 * `make bench` it cost them no measurable throughput and saved ~80 MB of peak
 * RSS across the four; the gateway keeps V8's default (4 MB cost it ~15 %).
 * run-all and `make bench` put it in each service's NODE_OPTIONS, and the
 * Compose file and the Kubernetes manifests set the same.
 */
export const serviceHeapFlags = "--max-semi-space-size=4";

const services = new Set(["token", "filter", "llm", "history"]);

/**
 * NODE_OPTIONS for process `name`: ours first for the four services, so
 * flags the caller set win; the gateway's and `all`'s are the caller's.
 */
export function nodeOptionsFor(name: string, inherited: string | undefined): string | undefined {
  if (!services.has(name)) return inherited;
  return inherited ? `${serviceHeapFlags} ${inherited}` : serviceHeapFlags;
}
