/** What the soak samples of each process, every SOAK_SAMPLE_S. */
export interface Sample {
  readonly at: number;
  /** How long one chat sent beside the load took. */
  readonly probeMs: number;
  readonly rssMb: Record<string, number>;
  readonly lagMs: Record<string, number>;
  readonly lagP99Ms: Record<string, number>;
  readonly heapMb: Record<string, number>;
}

/** Whether one process's memory plateaued, and the figures that say so. */
export interface Verdict {
  readonly process: string;
  readonly middleThirdRssMb: number;
  readonly lastThirdRssMb: number;
  /** Mean RSS of the last third against the middle third. */
  readonly rssGrowth: number;
  /** Highest RSS of the last third against the highest before it. */
  readonly peakRssGrowth: number;
  readonly heapGrowth: number;
  readonly meanLagMs: number;
  readonly maxLagP99Ms: number;
  readonly plateaued: boolean;
}

const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / Math.max(1, values.length);
const round = (v: number, digits: number) => Number(v.toFixed(digits));
const known = (values: number[]) => values.filter((v) => !Number.isNaN(v));

/**
 * Judges memory per process. The first third of the run is warm-up. Memory
 * plateaued when the mean RSS of the last third is within `maxGrowth` of the
 * middle third's, or when the last third sets no peak above `maxGrowth` over
 * the peak before it: the kernel may page idle memory out mid-run (DAMON
 * reclaim does on the development machine), which lowers a third's mean for
 * a while, whereas a leak keeps setting new peaks late in the run. Fewer
 * than three samples cannot tell: no process plateaued then.
 */
export function judgeMemory(
  samples: readonly Sample[],
  names: readonly string[],
  maxGrowth: number,
): Verdict[] {
  // With fewer than three samples a third is empty: its mean is 0 and the
  // peak before it -Infinity, which passed any process, a leaking one too.
  const judged = samples.length >= 3;
  const third = Math.floor(samples.length / 3);
  const middle = samples.slice(third, 2 * third);
  const last = samples.slice(2 * third);
  const before = samples.slice(0, 2 * third);
  return names.map((n) => {
    const rss = (s: Sample) => s.rssMb[n] ?? Number.NaN;
    const rssGrowth = mean(last.map(rss)) / mean(middle.map(rss)) - 1;
    const peakRssGrowth = Math.max(...last.map(rss)) / Math.max(...before.map(rss)) - 1;
    const heap = (s: Sample) => s.heapMb[n] ?? Number.NaN;
    return {
      process: n,
      middleThirdRssMb: round(mean(middle.map(rss)), 1),
      lastThirdRssMb: round(mean(last.map(rss)), 1),
      rssGrowth: round(rssGrowth, 4),
      peakRssGrowth: round(peakRssGrowth, 4),
      heapGrowth: round(mean(known(last.map(heap))) / mean(known(middle.map(heap))) - 1, 4),
      meanLagMs: round(mean(known(samples.map((s) => s.lagMs[n] ?? Number.NaN))), 1),
      maxLagP99Ms: round(Math.max(...known(samples.map((s) => s.lagP99Ms[n] ?? Number.NaN))), 1),
      plateaued: judged && (rssGrowth <= maxGrowth || peakRssGrowth <= maxGrowth),
    };
  });
}

const pct = (v: number) => `${(v * 100).toFixed(1)} %`.padStart(8);

/** The verdicts as lines of text. */
export function formatVerdicts(verdicts: readonly Verdict[]): string[] {
  return verdicts.map(
    (v) =>
      `  ${v.process.padEnd(8)} RSS ${String(v.middleThirdRssMb).padStart(6)} → ${String(v.lastThirdRssMb).padStart(6)} MB ${pct(v.rssGrowth)}, peak ${pct(v.peakRssGrowth)}` +
      `   heap ${pct(v.heapGrowth)}   lag mean ${v.meanLagMs} ms, worst p99 ${v.maxLagP99Ms} ms   ${v.plateaued ? "plateaued" : "STILL GROWING"}`,
  );
}
