import { describe, expect, it } from "vitest";
import { OptionError, soakOptions } from "../../bench/options.js";
import { judgeMemory, type Sample } from "../../bench/soak-verdict.js";

/** Samples of one process ("p") whose RSS is `rss[i]` MB at sample i. */
const samplesOf = (rss: readonly number[]): Sample[] =>
  rss.map((mb, i) => ({
    at: i * 10,
    probeMs: 1,
    rssMb: { p: mb },
    lagMs: { p: 1 },
    lagP99Ms: { p: 2 },
    heapMb: { p: mb / 2 },
  }));

const plateaued = (rss: readonly number[]) => judgeMemory(samplesOf(rss), ["p"], 0.1)[0]?.plateaued;

describe("make soak's memory verdict", () => {
  it("passes a process that levels off", () => {
    expect(plateaued([60, 100, 110, 112, 111, 113, 112, 111, 112, 113])).toBe(true);
  });

  it("fails a process that keeps growing", () => {
    expect(plateaued(Array.from({ length: 30 }, (_, i) => 100 + 10 * i))).toBe(false);
  });

  it("passes a process whose memory the kernel paged out for a while mid-run", () => {
    expect(plateaued([100, 120, 120, 90, 90, 90, 118, 119, 118])).toBe(true);
  });

  it.each([[[100]], [[100, 400]]])("passes no process on samples %j: too few to tell", (rss) => {
    expect(plateaued(rss)).toBe(false);
  });

  it("needs three samples: SOAK_SECONDS at least twice SOAK_SAMPLE_S", () => {
    expect(() => soakOptions({ SOAK_SECONDS: "15", SOAK_SAMPLE_S: "10" })).toThrow(
      new OptionError(
        "SOAK_SECONDS (15) must be at least twice SOAK_SAMPLE_S (10): the memory verdict needs three samples",
      ),
    );
    expect(soakOptions({ SOAK_SECONDS: "20", SOAK_SAMPLE_S: "10" }).seconds).toBe(20);
  });
});
