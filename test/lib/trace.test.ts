import { describe, expect, it } from "vitest";
import { continueTrace, formatTraceparent, traceCallOptions } from "../../src/lib/trace.js";

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

describe("continueTrace (W3C Trace Context, tracestate)", () => {
  const traceparent = `00-${traceId}-${parentId}-01`;
  const member = (i: number) => `k${i}=v${i}`;

  it.each([
    ["one member", "congo=t61rcWkgMzE", "congo=t61rcWkgMzE"],
    ["several, white space kept inside", "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", null],
    ["several headers, joined by commas", "foo=1, bar=2", null],
    ["empty members", "foo=1,,bar=2", null],
    ["a multi-tenant key", "fw529a3039@dt=a b", null],
    ["OWS around it", " \tfoo=1 \t", "foo=1"],
    ["32 members", Array.from({ length: 32 }, (_, i) => member(i)).join(","), null],
    ["a 256-character key", `${"a".repeat(256)}=1`, null],
    ["a 256-character value", `foo=${"v".repeat(256)}`, null],
  ])("passes on %s unchanged", (_case, tracestate, expected) => {
    const trace = continueTrace(traceparent, "r-1", tracestate);
    expect(trace.tracestate).toBe(expected ?? tracestate);
    expect(traceCallOptions(trace).headers).toEqual({
      traceparent: formatTraceparent(trace),
      tracestate: expected ?? tracestate,
      "x-request-id": "r-1",
    });
  });

  it.each([
    ["33 members", Array.from({ length: 33 }, (_, i) => member(i)).join(",")],
    ["a key twice", "foo=1,foo=2"],
    ["an upper-case key", "Foo=1"],
    ["a 257-character key", `${"a".repeat(257)}=1`],
    ["a 257-character value", `foo=${"v".repeat(257)}`],
    ["a value with a control character", "foo=a\u007fb"],
    ["a value with =", "foo=a=b"],
    ["no value", "foo="],
    ["no key", "=1"],
    ["only commas", " , ,"],
  ])("passes on no tracestate for %s", (_case, tracestate) => {
    const trace = continueTrace(traceparent, "r-1", tracestate);
    expect(trace.tracestate).toBeUndefined();
    expect(traceCallOptions(trace).headers).not.toHaveProperty("tracestate");
  });

  it("reads no tracestate beside a traceparent it cannot continue", () => {
    const trace = continueTrace(`00-${"0".repeat(32)}-${parentId}-01`, "r-1", "foo=1");
    expect(trace.tracestate).toBeUndefined();
    expect(continueTrace(undefined, "r-1", "foo=1").tracestate).toBeUndefined();
  });
});
