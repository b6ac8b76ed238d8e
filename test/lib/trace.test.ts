import { describe, expect, it } from "vitest";
import { continueTrace, formatTraceparent } from "../../src/lib/trace.js";

const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
const parentId = "00f067aa0ba902b7";

describe("continueTrace (W3C Trace Context, traceparent)", () => {
  it.each([
    ["version 00", `00-${traceId}-${parentId}-01`, "01"],
    ["surrounding white space", ` 00-${traceId}-${parentId}-00\t`, "00"],
    // A version this code does not know is read as far as version 00 goes.
    ["a later version", `01-${traceId}-${parentId}-01`, "01"],
    [
      "a later version with more fields",
      `cc-${traceId}-${parentId}-01-what-the-future-holds`,
      "01",
    ],
  ])("continues the caller's trace: %s", (_case, header, flags) => {
    const trace = continueTrace(header, "r-1");
    expect(trace.traceId).toBe(traceId);
    expect(trace.flags).toBe(flags);
    expect(trace.spanId).toMatch(/^[0-9a-f]{16}$/);
    expect(trace.spanId).not.toBe(parentId);
    // Passed on as version 00, the version this code writes.
    expect(formatTraceparent(trace)).toBe(`00-${traceId}-${trace.spanId}-${flags}`);
  });

  it.each([
    ["version ff (forbidden)", `ff-${traceId}-${parentId}-01`],
    ["version 00 with more fields", `00-${traceId}-${parentId}-01-extra`],
    ["a later version run on without a dash", `01-${traceId}-${parentId}-01extra`],
    ["upper-case hex", `00-${traceId.toUpperCase()}-${parentId}-01`],
    ["an all-zero trace id", `00-${"0".repeat(32)}-${parentId}-01`],
    ["an all-zero parent id", `00-${traceId}-${"0".repeat(16)}-01`],
    ["a short trace id", `00-${traceId.slice(1)}-${parentId}-01`],
    ["a one-digit version", `0-${traceId}-${parentId}-01`],
    ["no flags", `00-${traceId}-${parentId}`],
  ])("starts a new trace for %s", (_case, header) => {
    const trace = continueTrace(header, "r-1");
    expect(trace.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(trace.traceId).not.toBe(traceId);
    expect(trace.flags).toBe("01");
  });
});
