import { createHash, hash } from "node:crypto";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DigestMap, digestOf, sha256ByHashObject } from "../../../src/services/token/digest-map.js";

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
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as (options?: { type: "minor" | "major" }) => void;
    const held = () => process.memoryUsage().arrayBuffers;
    gc({ type: "major" });
    const before = held();
    // The scavenger's sweeper frees array buffers on a thread of its own:
    // wait for it (up to 3 s on a busy machine) until `done` holds.
    const settle = async (done: (bytes: number) => boolean) => {
      for (let i = 0; i < 30; i++) {
        gc({ type: "minor" });
        await new Promise((resolve) => setTimeout(resolve, 100));
        if (done(held())) return;
      }
    };
    const map = new DigestMap();
    // 190,000 keys: 262,144 slots of 24 bytes (6 MiB), in the old generation
    // after two full collections.
    for (let i = 0; i < 190_000; i++) map.set(digestOf(`user-${i}`), i);
    gc({ type: "major" });
    gc({ type: "major" });
    // 380,000: 524,288 slots (12 MiB); the old arrays are gone at once.
    for (let i = 190_000; i < 380_000; i++) map.set(digestOf(`user-${i}`), i);
    await settle((bytes) => bytes - before < 14 * 2 ** 20);
    const full = held();
    expect(full - before).toBeGreaterThan(10 * 2 ** 20);
    expect(full - before).toBeLessThan(14 * 2 ** 20);
    map.dispose();
    await settle((bytes) => full - bytes > 11 * 2 ** 20);
    expect(full - held()).toBeGreaterThan(11 * 2 ** 20);
    expect(map.size).toBe(0);
    expect(map.get(digestOf("user-1"))).toBeUndefined();
    map.set(digestOf("user-1"), 5);
    expect(map.get(digestOf("user-1"))).toBe(5);
  });
});
