import { createHash, hash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DigestMap, digestOf, sha256ByHashObject } from "../../../src/services/token/digest-map.js";
import { runWithOneGcThread } from "../../fixtures/gc-process.js";

describe("digestOf", () => {
  it("is the SHA-256 of the string's UTF-8", () => {
    for (const key of ["", "user-1", "7:user-1019a0b6c-…", "ユーザー😀"]) {
      expect(Buffer.from(digestOf(key), "latin1")).toEqual(
        createHash("sha256").update(key, "utf8").digest(),
      );
    }
  });

  it("tells apart strings UTF-8 cannot: lone surrogates and U+FFFD", () => {
    const keys = [
      "\ud800",
      "\udc00",
      "\ufffd",
      "a\ud800",
      "a\ufffd",
      "\ud800\ud800",
      "\ufffd\ufffd",
    ];
    expect(new Set(keys.map(digestOf)).size).toBe(keys.length);
  });

  it("has the same digests on a Node without crypto.hash", () => {
    for (const data of ["", "user-1", "ユーザー😀", Buffer.from([0xff, 0x00, 0xd8])]) {
      expect(sha256ByHashObject(data)).toBe(hash("sha256", data, "binary"));
    }
  });
});

describe("DigestMap", () => {
  it("keeps every key it was given, and its last value, through each doubling", () => {
    const map = new DigestMap();
    const n = 10_000; // 1,024 slots at first: five doublings
    for (let i = 0; i < n; i++) {
      map.set(digestOf(`k${i}`), i);
      // The key set as the map grows is kept too, and no other key's value moves.
      expect(map.get(digestOf(`k${i}`))).toBe(i);
    }
    for (let i = 0; i < n; i += 3) map.set(digestOf(`k${i}`), -i);
    expect(map.size).toBe(n);
    for (let i = 0; i < n; i++) expect(map.get(digestOf(`k${i}`))).toBe(i % 3 === 0 ? -i : i);
    expect(map.get(digestOf(`k${n}`))).toBeUndefined();
  });

  it("keeps what a Map keeps, whatever the order of sets", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.tuple(fc.integer({ min: 0, max: 3000 }), fc.integer({ min: -1, max: 2 ** 40 })),
          // Past 768 keys the map doubles.
          { minLength: 500, maxLength: 4000, size: "max" },
        ),
        (ops) => {
          const map = new DigestMap();
          const model = new Map<string, number>();
          for (const [k, v] of ops) {
            map.set(digestOf(`k${k}`), v);
            model.set(`k${k}`, v);
          }
          expect(map.size).toBe(model.size);
          for (let k = 0; k <= 3000; k++)
            expect(map.get(digestOf(`k${k}`))).toBe(model.get(`k${k}`));
        },
      ),
      { numRuns: 30 },
    );
  });

  it("refuses NaN, which marks a free slot", () => {
    const map = new DigestMap();
    expect(() => map.set(digestOf("a"), Number.NaN)).toThrow(RangeError);
    expect(map.get(digestOf("a"))).toBeUndefined();
    expect(map.size).toBe(0);
  });

  it("gives its memory back at the next scavenge once disposed, or grown, though old", async () => {
    const { grown, disposed } = await runWithOneGcThread<{ grown: number; disposed: number }>(
      new URL("../../fixtures/digest-map-memory.ts", import.meta.url),
    );
    // 12 MiB of arrays after the growth: the 6 MiB before it are gone.
    expect(grown).toBeGreaterThan(10 * 2 ** 20);
    expect(grown).toBeLessThan(14 * 2 ** 20);
    // Disposed: what is left is the new empty map's 24 KiB.
    expect(disposed).toBeLessThan(2 ** 20);
  });

  it("is empty and usable again once disposed", () => {
    const map = new DigestMap();
    for (let i = 0; i < 5_000; i++) map.set(digestOf(`user-${i}`), i);
    map.dispose();
    expect(map.size).toBe(0);
    expect(map.get(digestOf("user-1"))).toBeUndefined();
    map.set(digestOf("user-1"), 5);
    expect(map.get(digestOf("user-1"))).toBe(5);
  });
});
