/**
 * The V8 heap flag the four services run with: a young generation of at most
 * 3 × 4 MB instead of V8's 3 × 16 MB. They keep little per call, so under
 * `make bench` it cost them no measurable throughput and saved ~80 MB of peak
 * RSS across the four; the gateway keeps V8's default (4 MB cost it ~15 %).
 */
export const serviceHeapFlags = "--max-semi-space-size=4";

/**
 * Filter's, llm's and history's: a 512 MB old generation besides. V8 lets
 * the old generation grow to between 1.3 and 4 times what the last full
 * collection left, by how large it may get: 4 times for a limit of 2 GB and
 * more, which Node's default is on a machine with 8 GB or more (4 GB on a
 * 24 GB one); at 512 MB the factor is 1.4.
 * - History promotes a little of each batch it writes, so under `make bench`
 *   its old generation held ~17 MB of garbage (12 MB live, 29 MB in all)
 *   before its next full collection; at 512 MB its peak RSS is ~14 MB lower
 *   for the same CPU per chat.
 * - At V8's limit, since its startup heap is smaller (Fastify's schema
 *   compilers on demand, see http-app.ts), the llm service fell under load,
 *   in most `make bench` runs, into a state where each scavenge promoted
 *   ~1 MB and took 2–4 ms instead of 0.25: 91–96 MB of peak RSS and 16–19
 *   µs of CPU per chat instead of 66–69 MB and 10–12 µs. Why was not found
 *   (docs/performance.md); at 512 MB it never did in 14 runs. The filter,
 *   built the same way, gets the same limit (~1 MB less, same CPU per chat).
 * What these three keep is bounded by a batch and a page of results, a
 * call, and the term list. The token keeps V8's limit: at 512 MB it took
 * 20 µs per chat instead of 15 and peaked higher.
 */
export const boundedHeapFlags = `${serviceHeapFlags} --max-old-space-size=512`;

/**
 * The V8 heap flags of each service. run-all and `make bench` put them in its
 * NODE_OPTIONS, and the Compose file sets the same. The Kubernetes manifests
 * set `serviceHeapFlags` only: in a container with a memory limit Node sizes
 * the heap from that limit (256 MiB gives V8's smallest factor, 1.3), and
 * 512 MB would be above it.
 */
export const heapFlags: Readonly<Record<string, string>> = {
  token: serviceHeapFlags,
  filter: boundedHeapFlags,
  llm: boundedHeapFlags,
  history: boundedHeapFlags,
};

/**
 * NODE_OPTIONS for process `name`: ours first for the four services, so
 * flags the caller set win; the gateway's and `all`'s are the caller's.
 */
export function nodeOptionsFor(name: string, inherited: string | undefined): string | undefined {
  const ours = Object.hasOwn(heapFlags, name) ? heapFlags[name] : undefined;
  if (ours === undefined) return inherited;
  return inherited ? `${ours} ${inherited}` : ours;
}

/**
 * glibc malloc's settings for every process: MALLOC_MMAP_THRESHOLD_ fixes the
 * size from which an allocation gets a mapping of its own, returned to the
 * system when it is freed, at glibc's default of 128 KiB. Left unset, glibc
 * raises that threshold after each such free (up to 32 MiB), so later large
 * buffers come from the heap, whose freed space stays resident: under
 * `make bench` setting it cost no measurable throughput and saved ~25 MB of
 * peak RSS across the five processes. run-all and `make bench` set it for
 * each process unless the caller's environment does; the image sets it too.
 * It has no effect where the C library is not glibc.
 */
export const mallocEnv: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: "131072" };

/** The environment for process `name`: `env` with its NODE_OPTIONS and malloc settings. */
export function processEnvFor(
  name: string,
  env: Readonly<Record<string, string | undefined>>,
): Record<string, string | undefined> {
  return { ...mallocEnv, ...env, NODE_OPTIONS: nodeOptionsFor(name, env.NODE_OPTIONS) };
}
