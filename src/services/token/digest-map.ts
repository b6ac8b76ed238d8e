import * as crypto from "node:crypto";

/**
 * A key as the memory quota store keeps it: the first 128 bits of the SHA-256
 * of a string, so that what the store keeps per key is 16 bytes whatever the
 * key's length. Two keys share a digest with a probability of about 2^-128
 * per pair, and no one is known to be able to make two that do. A digest is
 * handed around as the hash's 32 bytes in a Latin-1 string: a short-lived
 * string costs less than a `Buffer`, a separate allocation outside V8's heap
 * (0.3 against 0.7 µs a digest).
 */
export type Digest = string;

// With the u flag a well-formed surrogate pair is one code point, so only lone halves match.
const loneSurrogate = /\p{Cs}/u;
/** A byte UTF-8 never holds: starts the bytes hashed for a string it cannot encode. */
const notUtf8 = Buffer.from([0xff]);

/** SHA-256 through a `Hash` object: for Node before 20.12, which has no `crypto.hash`. */
export function sha256ByHashObject(data: string | Buffer): string {
  return crypto.createHash("sha256").update(data).digest("binary");
}

/** `crypto.hash` (Node 20.12 and later) is one call and no object: under half the time of a `Hash`. */
const sha256: (data: string | Buffer) => string =
  typeof crypto.hash === "function"
    ? (data) => crypto.hash("sha256", data, "binary")
    : sha256ByHashObject;

/**
 * The digest of `key`. A string's UTF-8 is one to one but for lone
 * surrogates, which it turns into U+FFFD ("\ud800" and "\udc00" would share a
 * digest): a string holding one is hashed as 0xff and its UTF-16 instead.
 */
export function digestOf(key: string): Digest {
  if (!loneSurrogate.test(key)) return sha256(key);
  return sha256(Buffer.concat([notUtf8, Buffer.from(key, "utf16le")]));
}

const wordsPerSlot = 4;
const initialSlots = 1024;
/** Grows (doubles) before more than this share of the slots is taken. */
const maxLoad = 0.75;

/**
 * A map from digests to numbers in two typed arrays, outside V8's heap: 24
 * bytes a slot (a 16-byte digest and a float64), 32–64 bytes a key with the
 * slots at most three quarters full. A `Map` of strings to numbers takes
 * ~100 bytes per key for the same ids (the string, and the map's entry), all
 * of it for the collector to mark. Open addressing with linear probing; keys
 * are never removed (a day's map is dropped as a whole).
 */
export class DigestMap {
  /** Each slot's digest as four 32-bit words. */
  #words = new Int32Array(initialSlots * wordsPerSlot);
  /** Each slot's value; NaN: the slot is free (values are always numbers). */
  #values = new Float64Array(initialSlots).fill(Number.NaN);
  #mask = initialSlots - 1;
  #size = 0;

  get size(): number {
    return this.#size;
  }

  get(digest: Digest): number | undefined {
    const value = this.#values[this.#find(load(digest))] as number;
    return Number.isNaN(value) ? undefined : value;
  }

  /** Sets the value of `digest`: a number, never NaN. */
  set(digest: Digest, value: number): void {
    if (Number.isNaN(value)) throw new RangeError("DigestMap values are numbers, not NaN");
    let slot = this.#find(load(digest));
    if (Number.isNaN(this.#values[slot] as number)) {
      if (this.#size + 1 > (this.#mask + 1) * maxLoad) {
        this.#grow();
        slot = this.#find(scratch);
      }
      this.#words.set(scratch, slot * wordsPerSlot);
      this.#size++;
    }
    this.#values[slot] = value;
  }

  /** The slot holding the digest whose words are `w`, or the free slot where it would go. */
  #find(w: Int32Array): number {
    const w0 = w[0] as number;
    const words = this.#words;
    const values = this.#values;
    let slot = w0 & this.#mask;
    for (;;) {
      if (Number.isNaN(values[slot] as number)) return slot;
      const at = slot * wordsPerSlot;
      if (
        words[at] === w0 &&
        words[at + 1] === w[1] &&
        words[at + 2] === w[2] &&
        words[at + 3] === w[3]
      ) {
        return slot;
      }
      slot = (slot + 1) & this.#mask;
    }
  }

  #grow(): void {
    const words = this.#words;
    const values = this.#values;
    const slots = (this.#mask + 1) * 2;
    this.#words = new Int32Array(slots * wordsPerSlot);
    this.#values = new Float64Array(slots).fill(Number.NaN);
    this.#mask = slots - 1;
    for (let slot = 0; slot < values.length; slot++) {
      const value = values[slot] as number;
      if (Number.isNaN(value)) continue;
      const from = slot * wordsPerSlot;
      for (let i = 0; i < wordsPerSlot; i++) moving[i] = words[from + i] as number;
      const to = this.#find(moving);
      this.#words.set(moving, to * wordsPerSlot);
      this.#values[to] = value;
    }
    release(words.buffer);
    release(values.buffer);
  }

  /** Gives the map's memory back now; the map is empty afterwards. */
  dispose(): void {
    release(this.#words.buffer);
    release(this.#values.buffer);
    this.#words = new Int32Array(initialSlots * wordsPerSlot);
    this.#values = new Float64Array(initialSlots).fill(Number.NaN);
    this.#mask = initialSlots - 1;
    this.#size = 0;
  }
}

/**
 * Frees `buffer`'s memory at the next scavenge instead of the next full
 * collection. A map's arrays live long enough to be in V8's old generation,
 * where a dropped one would stay until a mark-compact, which may not come for
 * a long while (the heap itself hardly grows): moving the bytes to a new
 * ArrayBuffer, which dies young, detaches the old one (its views read as
 * empty) and lets the scavenger free them.
 */
function release(buffer: ArrayBufferLike): void {
  structuredClone(buffer, { transfer: [buffer as ArrayBuffer] });
}

/** The words of the digest last loaded. */
const scratch = new Int32Array(wordsPerSlot);
/** The words of the digest a growing map moves (`scratch` holds the one being set). */
const moving = new Int32Array(wordsPerSlot);

/** Loads the first 16 bytes of `digest` into `scratch` as four 32-bit words. */
function load(digest: Digest): Int32Array {
  for (let i = 0; i < wordsPerSlot; i++) {
    const b = i * 4;
    scratch[i] =
      digest.charCodeAt(b) |
      (digest.charCodeAt(b + 1) << 8) |
      (digest.charCodeAt(b + 2) << 16) |
      (digest.charCodeAt(b + 3) << 24);
  }
  return scratch;
}
