import { describe, expect, it } from "vitest";
import { previousWindow, windowAt } from "../../../src/services/token/clock.js";

const dayMs = 86_400_000;

/** The window of `at`, worked out from scratch. */
function expected(at: number) {
  const start = Math.floor(at / dayMs) * dayMs;
  return { day: new Date(start).toISOString().slice(0, 10), resetAt: start + dayMs };
}

describe("windowAt", () => {
  it("gives each instant its own UTC day, however calls jump between days", () => {
    const midnight = Date.UTC(2026, 10, 27);
    const instants = [
      midnight + 5,
      midnight - 1,
      midnight,
      midnight + dayMs - 1,
      midnight + dayMs,
      midnight - 1,
      Date.UTC(2024, 1, 29, 12),
      midnight + 3 * dayMs + 7,
      midnight + 5,
    ];
    for (const at of instants) {
      const window = windowAt(new Date(at));
      expect({ day: window.day, resetAt: window.resetAt.getTime() }).toEqual(expected(at));
    }
  });

  it("gives the day before across month and year ends", () => {
    expect(previousWindow(windowAt(new Date(Date.UTC(2027, 0, 1, 0, 0, 0, 1)))).day).toBe(
      "2026-12-31",
    );
    expect(previousWindow(windowAt(new Date(Date.UTC(2028, 2, 1)))).day).toBe("2028-02-29");
  });
});
