import { describe, expect, it } from "vitest";
import { previousWindow, windowAt } from "../../../src/services/token/clock.js";
import { createMemoryQuotaStore } from "../../../src/services/token/memory-store.js";
import { runWithOneGcThread } from "../../fixtures/gc-process.js";
import { describeQuotaStore } from "./quota-store.conformance.js";

describe("windowAt", () => {
  it("is the UTC day, resetting at the next UTC midnight", () => {
    const day1 = windowAt(new Date("2026-11-26T10:00:00Z"));
    expect(day1.day).toBe("2026-11-26");
    expect(day1.resetAt.toISOString()).toBe("2026-11-27T00:00:00.000Z");
    expect(windowAt(new Date("2026-11-26T23:59:59.999Z")).day).toBe("2026-11-26");
    expect(windowAt(new Date("2026-11-27T00:00:00Z")).day).toBe("2026-11-27");
  });

  it("knows the day before, across months and years", () => {
    expect(previousWindow(windowAt(new Date("2026-12-01T05:00:00Z"))).day).toBe("2026-11-30");
    expect(previousWindow(windowAt(new Date("2027-01-01T00:00:00Z"))).day).toBe("2026-12-31");
  });
});

describeQuotaStore("memory", {
  create: () => createMemoryQuotaStore(),
  dispose: (store) => store.close(),
});

describe("memory quota store's footprint", () => {
  it("keeps a new user's charge in under 140 bytes, heap and typed arrays together", async () => {
    const { perCharge, lastUserCount } = await runWithOneGcThread<{
      perCharge: number;
      lastUserCount: number;
    }>(new URL("../../fixtures/memory-store-footprint.ts", import.meta.url));
    // The last user's counter reads its one charge.
    expect(lastUserCount).toBe(1);
    // Two slots of 24 bytes (a digest and a number) in maps three eighths to
    // three quarters full: 64 to 128 bytes, 128 at 50,000, just after both
    // maps doubled. Strings in a Map took ~160, and an object per charge with
    // a template-literal key ~270.
    expect(perCharge).toBeLessThan(140);
    expect(perCharge).toBeGreaterThan(64);
  });
});
