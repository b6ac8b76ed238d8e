import { describe, expect, it } from "vitest";
import { continueTrace, newRequestId } from "../../src/lib/trace.js";

// RFC 9562: version 7 in the 13th hex digit, variant 10 in the 17th.
const uuidV7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** The Unix milliseconds in a UUIDv7's first 48 bits. */
const msOf = (id: string) => Number.parseInt(id.replace(/-/g, "").slice(0, 12), 16);
/** The 12-bit counter after the version digit. */
const counterOf = (id: string) => Number.parseInt(id.slice(15, 18), 16);

describe("newRequestId", () => {
  it("is a UUIDv7 carrying the time it was made", () => {
    const before = Date.now();
    const id = newRequestId();
    const after = Date.now();
    expect(id).toMatch(uuidV7);
    expect(msOf(id)).toBeGreaterThanOrEqual(before);
    expect(msOf(id)).toBeLessThanOrEqual(after);
    // Ten years ahead, past any id made so far in this process.
    const t = Date.now() + 10 * 365 * 86_400_000;
    expect(msOf(newRequestId(t))).toBe(t);
  });

  it("sorts in the order ids were made, within a millisecond and across its counter's end", () => {
    const t = Date.now() + 20 * 365 * 86_400_000;
    const ids = Array.from({ length: 5000 }, () => newRequestId(t));
    for (const id of ids) expect(id).toMatch(uuidV7);
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
    // The counter starts at most at 2047, so 5000 ids in one millisecond run
    // past 4095 and go on in the next millisecond, from 0.
    expect(counterOf(ids[0] as string)).toBeLessThanOrEqual(0x7ff);
    expect(msOf(ids[0] as string)).toBe(t);
    expect(msOf(ids.at(-1) as string)).toBe(t + 1);
    const next = ids.findIndex((id) => msOf(id) === t + 1);
    expect(counterOf(ids[next] as string)).toBe(0);
    expect(counterOf(ids[next - 1] as string)).toBe(0xfff);
  });

  it("does not follow a clock that goes back", () => {
    const t = Date.now() + 30 * 365 * 86_400_000;
    const first = newRequestId(t);
    const earlier = newRequestId(t - 5000);
    expect(earlier > first).toBe(true);
    expect(msOf(earlier)).toBe(t);
  });

  it("has 62 random bits after its counter", () => {
    const t = Date.now() + 40 * 365 * 86_400_000;
    const tails = new Set(Array.from({ length: 1000 }, () => newRequestId(t).slice(19)));
    expect(tails.size).toBe(1000);
  });

  it("is the request id of a trace that has none", () => {
    expect(continueTrace(undefined, undefined).requestId).toMatch(uuidV7);
    expect(continueTrace(undefined, "caller-id-1").requestId).toBe("caller-id-1");
  });
});
