import {
  type DescField,
  type DescMessage,
  fromBinary,
  type Message,
  ScalarType,
  toBinary,
} from "@bufbuild/protobuf";
import { getTextEncoding } from "@bufbuild/protobuf/wire";
import { isWrapperDesc } from "@bufbuild/protobuf/wkt";

/** Encodes and decodes one message type in protobuf binary. */
export interface Codec<T extends Message = Message> {
  encode(message: T): Uint8Array;
  /** Throws, as `fromBinary` does, when the bytes are not a valid message. */
  decode(bytes: Uint8Array): T;
}

/**
 * The protobuf binary codec of the lean paths: for message types made only
 * of what our RPCs carry (proto3 strings, single or repeated, bools, int32,
 * enums and int64 as bigint, and messages: single, repeated or in a oneof),
 * a compiled plan reads and writes the fields directly, about three times
 * faster than protobuf-es's reflective `toBinary`/`fromBinary` and with a
 * fraction of their garbage (`make bench-micro`, codec lines). A single
 * message field of a type the plan cannot cover is written and read by
 * protobuf-es alone. The bytes and messages are the same as theirs;
 * anything the plan does not cover (other field kinds, unknown fields, a
 * field twice, malformed input, a value of the wrong type) goes to
 * protobuf-es itself, so its results and errors are kept exactly.
 */
export function codecFor<T extends Message>(desc: DescMessage): Codec<T> {
  let codec = codecs.get(desc);
  if (codec === undefined) {
    const plan = planOf(desc);
    codec = plan === undefined ? reflective(desc) : compiled(plan);
    codecs.set(desc, codec);
  }
  return codec as Codec<T>;
}

/** Whether `desc` gets a compiled plan (else protobuf-es does all the work). */
export function isCompiled(desc: DescMessage): boolean {
  return compiledCodecs.has(codecFor(desc));
}

/**
 * How many encodes and decodes of compiled types protobuf-es took over
 * (unknown fields, malformed input, values of the wrong type).
 */
export const codecFallbacks = (): number => fallbacks;

let fallbacks = 0;

const codecs = new WeakMap<DescMessage, Codec>();
const compiledCodecs = new WeakSet<Codec>();

const reflective = (desc: DescMessage): Codec => ({
  encode: (message) => toBinary(desc, message),
  decode: (bytes) => fromBinary(desc, bytes),
});

function compiled(plan: Plan): Codec {
  const codec: Codec = {
    encode(message) {
      try {
        return encodeMessage(plan, message);
      } catch (err) {
        if (err !== bail) throw err;
        fallbacks++;
        return toBinary(plan.desc, message);
      }
    },
    decode(bytes) {
      try {
        return decodeMessage(plan, bytes);
      } catch (err) {
        if (err !== bail) throw err;
        fallbacks++;
        return fromBinary(plan.desc, bytes);
      }
    },
  };
  compiledCodecs.add(codec);
  return codec;
}

// Field kinds a plan covers.
const STRING = 0;
const BOOL = 1;
const INT32 = 2;
const INT64 = 3;
const MESSAGE = 4;
const MESSAGE_LIST = 5;
const STRING_LIST = 6;
/** A message field of a type with no plan: protobuf-es writes and reads that message alone. */
const OPAQUE = 7;

const VARINT = 0;
const LENGTH_DELIMITED = 2;
/** protobuf-es's `FeatureSet.FieldPresence.IMPLICIT`. */
const IMPLICIT = 2;
/** protobuf-es's default recursion limit when reading. */
const maxDepth = 100;

interface FieldPlan {
  readonly name: string;
  readonly kind: number;
  /** The field's tag, as written (number and wire type). */
  readonly tag: number;
  readonly strictUtf8: boolean;
  /** For message fields. */
  readonly plan: Plan | undefined;
  /** For an OPAQUE field: its message type. */
  readonly message: DescMessage | undefined;
  /** The oneof the field is a case of: its value is `message[oneof]`, `{ case, value }`. */
  readonly oneof: string | undefined;
}

/** A oneof's value in a message. */
interface Chosen {
  readonly case: string | undefined;
  readonly value?: unknown;
}

interface Plan {
  readonly desc: DescMessage;
  /** In field-number order, as protobuf-es writes them. */
  readonly fields: FieldPlan[];
  /** By field number. */
  readonly byNumber: (FieldPlan | undefined)[];
  /** A new message, as protobuf-es's `create` makes it (set once the fields are planned). */
  zero: () => Record<string, unknown>;
}

/** Thrown inside the plan's reader and writer: protobuf-es takes over. */
const bail = new Error("not covered by the compiled codec");

/**
 * The plan of `desc`, or undefined. A type found to have no plan was seen
 * half-planned until then (by a field of its own, or by a field of another
 * type it holds, or a second field of it): planning starts again knowing it,
 * so that no plan kept holds one left half-made.
 */
function planOf(desc: DescMessage): Plan | undefined {
  const unplanned = new Set<DescMessage>();
  for (;;) {
    const known = unplanned.size;
    const plan = planFor(desc, new Map(), unplanned);
    if (unplanned.size === known) return plan;
  }
}

function planFor(
  desc: DescMessage,
  seen: Map<DescMessage, Plan>,
  unplanned: Set<DescMessage>,
): Plan | undefined {
  const known = seen.get(desc);
  if (known !== undefined) return known;
  if (unplanned.has(desc)) return undefined;
  if (isWrapperDesc(desc)) return undefined;
  const plan = planFields(desc, seen, unplanned);
  if (plan === undefined) unplanned.add(desc);
  return plan;
}

function planFields(
  desc: DescMessage,
  seen: Map<DescMessage, Plan>,
  unplanned: Set<DescMessage>,
): Plan | undefined {
  const fields: FieldPlan[] = [];
  const byNumber: (FieldPlan | undefined)[] = [];
  const plan: Plan = { desc, fields, byNumber, zero: () => ({}) };
  seen.set(desc, plan);
  for (const field of desc.fields) {
    let kind = kindOf(field);
    if (kind === undefined || field.number > 1024) return undefined;
    let nested: Plan | undefined;
    const message = kind >= MESSAGE ? (field as { message?: DescMessage }).message : undefined;
    if (message !== undefined) {
      nested = planFor(message, seen, unplanned);
      // A single message of another kind (floats, say) costs only where it is set.
      if (nested === undefined && kind === MESSAGE && field.oneof === undefined) kind = OPAQUE;
      else if (nested === undefined) return undefined;
    }
    const wire = kind === STRING || kind >= MESSAGE ? LENGTH_DELIMITED : VARINT;
    const fieldPlan: FieldPlan = {
      name: field.localName,
      kind,
      tag: ((field.number << 3) | wire) >>> 0,
      strictUtf8: (kind === STRING || kind === STRING_LIST) && field.utf8Validation,
      plan: nested,
      message: kind === OPAQUE ? message : undefined,
      oneof: field.oneof?.localName,
    };
    fields.push(fieldPlan);
    byNumber[field.number] = fieldPlan;
  }
  fields.sort((a, b) => a.tag - b.tag);
  plan.zero = zeroMaker(desc);
  return plan;
}

/** By kind; a message field (explicit presence) is never in a new message. */
const zeroLiterals = ['""', "false", "0", "0n", "undefined", "[]", "[]"];
const noCase = "{ case: undefined }";

/**
 * Makes new messages of `desc` as protobuf-es's `create` does (its type name,
 * then every oneof with no case and every implicit-presence field at its
 * zero, in declaration order) from
 * an object literal, so that they all share one shape: decoding a chat's six
 * call messages took 1.8 µs this way against 2.8 µs setting the fields one
 * by one. The code made holds only JSON-quoted names and fixed literals.
 */
function zeroMaker(desc: DescMessage): () => Record<string, unknown> {
  const entries = [`$typeName: ${JSON.stringify(desc.typeName)}`];
  for (const member of desc.members) {
    if (member.kind === "oneof") entries.push(`${JSON.stringify(member.localName)}: ${noCase}`);
    else if (member.presence === IMPLICIT) {
      entries.push(
        `${JSON.stringify(member.localName)}: ${zeroLiterals[kindOf(member) as number]}`,
      );
    }
  }
  return new Function(`return () => ({ ${entries.join(", ")} });`)();
}

function kindOf(field: DescField): number | undefined {
  switch (field.fieldKind) {
    case "scalar":
      // Oneofs of messages only (a oneof's scalar is written even when zero).
      if (field.oneof !== undefined || field.presence !== IMPLICIT) return undefined;
      if (field.getDefaultValue() !== undefined) return undefined;
      switch (field.scalar) {
        case ScalarType.STRING:
          return STRING;
        case ScalarType.BOOL:
          return BOOL;
        case ScalarType.INT32:
          return INT32;
        case ScalarType.INT64:
          return field.longAsString ? undefined : INT64;
        default:
          return undefined;
      }
    case "enum":
      // Written and read as an int32 is, protobuf-es's open enums too.
      if (field.oneof !== undefined || field.presence !== IMPLICIT) return undefined;
      return field.getDefaultValue() === undefined ? INT32 : undefined;
    case "message":
      return field.delimitedEncoding || isWrapperDesc(field.message) ? undefined : MESSAGE;
    case "list":
      if (field.listKind === "message") return field.delimitedEncoding ? undefined : MESSAGE_LIST;
      return field.listKind === "scalar" && field.scalar === ScalarType.STRING
        ? STRING_LIST
        : undefined;
    default:
      return undefined;
  }
}

// ---- Reading. One message is read at a time, synchronously.

const noInput: Buffer = Buffer.alloc(0);
let input = noInput;
/** The bytes as given: what protobuf-es reads an OPAQUE field from (its unknown fields are views of them). */
let given: Uint8Array = noInput;
let at = 0;

function decodeMessage<T extends Message>(plan: Plan, bytes: Uint8Array): T {
  input = Buffer.isBuffer(bytes)
    ? bytes
    : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  given = bytes;
  at = 0;
  try {
    return readMessage(plan, input.length, 1) as T;
  } finally {
    input = noInput;
    given = noInput;
  }
}

function readMessage(plan: Plan, end: number, depth: number): Record<string, unknown> {
  if (depth > maxDepth) throw bail;
  const message = plan.zero();
  while (at < end) {
    const tag = readVarint32(end);
    const field = plan.byNumber[tag >>> 3];
    if (field === undefined || field.tag !== tag) throw bail;
    if (field.oneof !== undefined) {
      // A case given twice is merged by protobuf-es.
      if ((message[field.oneof] as Chosen).case === field.name) throw bail;
      const stop = readLength(end);
      message[field.oneof] = {
        case: field.name,
        value: readMessage(field.plan as Plan, stop, depth + 1),
      };
      continue;
    }
    switch (field.kind) {
      case STRING:
        message[field.name] = readString(end, field.strictUtf8);
        break;
      case BOOL:
        message[field.name] = readBool(end);
        break;
      case INT32:
        message[field.name] = readInt32(end);
        break;
      case INT64:
        message[field.name] = readInt64(end);
        break;
      case MESSAGE: {
        // A message field given twice is merged by protobuf-es.
        if (message[field.name] !== undefined) throw bail;
        const stop = readLength(end);
        message[field.name] = readMessage(field.plan as Plan, stop, depth + 1);
        break;
      }
      case STRING_LIST:
        (message[field.name] as unknown[]).push(readString(end, field.strictUtf8));
        break;
      case OPAQUE: {
        if (message[field.name] !== undefined) throw bail;
        const stop = readLength(end);
        try {
          message[field.name] = fromBinary(field.message as DescMessage, given.subarray(at, stop));
        } catch {
          // protobuf-es reads the whole message again, and throws what it throws.
          throw bail;
        }
        at = stop;
        break;
      }
      default: {
        const stop = readLength(end);
        (message[field.name] as unknown[]).push(readMessage(field.plan as Plan, stop, depth + 1));
      }
    }
  }
  if (at !== end) throw bail;
  return message;
}

/** A varint of at most 5 bytes, as an unsigned 32-bit number. */
function readVarint32(end: number): number {
  let value = 0;
  for (let shift = 0; shift < 35; shift += 7) {
    if (at >= end) throw bail;
    const byte = input[at++] as number;
    if (shift === 28 && byte > 0x0f) throw bail;
    value += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return value;
  }
  throw bail;
}

/**
 * An int32: up to 10 bytes (a negative one is sign-extended to 64 bits), the
 * low 32 bits kept, as protobuf-es reads it.
 */
function readInt32(end: number): number {
  let value = 0;
  for (let shift = 0; shift < 28; shift += 7) {
    if (at >= end) throw bail;
    const byte = input[at++] as number;
    value |= (byte & 0x7f) << shift;
    if (byte < 0x80) return value;
  }
  if (at >= end) throw bail;
  let byte = input[at++] as number;
  value |= (byte & 0x0f) << 28;
  for (let read = 5; byte >= 0x80 && read < 10; read++) {
    if (at >= end) throw bail;
    byte = input[at++] as number;
  }
  if (byte >= 0x80) throw bail;
  return value;
}

/** A length prefix: the end of what it delimits. */
function readLength(end: number): number {
  const length = readVarint32(end);
  if (length > end - at) throw bail;
  return at + length;
}

function readBool(end: number): boolean {
  let set = false;
  for (let i = 0; i < 10; i++) {
    if (at >= end) throw bail;
    const byte = input[at++] as number;
    // Bits past the 64th are dropped, as protobuf-es drops them.
    if ((byte & (i === 9 ? 0x01 : 0x7f)) !== 0) set = true;
    if (byte < 0x80) return set;
  }
  throw bail;
}

const twoTo32 = 2 ** 32;

function readInt64(end: number): bigint {
  // Up to 7 bytes (49 bits) add up exactly in a double.
  let value = 0;
  for (let shift = 0; shift < 49; shift += 7) {
    if (at >= end) throw bail;
    const byte = input[at++] as number;
    value += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return BigInt(value);
  }
  // Longer ones (large or negative values), 10 bytes at most.
  const low = value % twoTo32;
  let high = Math.floor(value / twoTo32);
  for (let shift = 49; shift < 70; shift += 7) {
    if (at >= end) throw bail;
    const byte = input[at++] as number;
    high += (byte & 0x7f) * 2 ** (shift - 32);
    if (byte < 0x80) {
      // Bits past the 64th are dropped, as protobuf-es drops them.
      high = high % twoTo32;
      return BigInt.asIntN(64, (BigInt(high) << 32n) | BigInt(low));
    }
  }
  throw bail;
}

function readString(end: number, strict: boolean): string {
  const stop = readLength(end);
  const start = at;
  at = stop;
  for (let i = start; i < stop; i++) {
    if ((input[i] as number) >= 0x80) {
      try {
        return getTextEncoding().decodeUtf8(input.subarray(start, stop), strict);
      } catch {
        throw bail;
      }
    }
  }
  return input.toString("latin1", start, stop);
}

// ---- Writing, into one growing scratch buffer; the result is copied out.

const scratchBytes = 16 * 1024;
let output = Buffer.allocUnsafeSlow(scratchBytes);
let end = 0;

function encodeMessage(plan: Plan, message: Message): Uint8Array {
  end = 0;
  try {
    writeMessage(plan, message as unknown as Record<string, unknown>);
    const bytes = Buffer.allocUnsafe(end);
    output.copy(bytes, 0, 0, end);
    return bytes;
  } finally {
    // A large message does not keep its large buffer.
    if (output.length > 64 * scratchBytes) output = Buffer.allocUnsafeSlow(scratchBytes);
  }
}

function room(bytes: number): void {
  if (end + bytes <= output.length) return;
  const larger = Buffer.allocUnsafeSlow(Math.max(end + bytes, 2 * output.length));
  output.copy(larger, 0, 0, end);
  output = larger;
}

function writeMessage(plan: Plan, message: Record<string, unknown>): void {
  if (typeof message !== "object" || message === null) throw bail;
  if (message.$typeName !== plan.desc.typeName) throw bail;
  const unknown = message.$unknown as unknown[] | undefined;
  if (unknown !== undefined && unknown.length > 0) throw bail;
  for (const field of plan.fields) {
    if (field.oneof !== undefined) {
      // A case of a oneof of messages: written when chosen.
      const oneof = message[field.oneof] as Chosen;
      if (typeof oneof !== "object" || oneof === null) throw bail;
      if (oneof.case !== field.name) continue;
      writeTag(field.tag);
      writeDelimited(field.plan as Plan, oneof.value as Record<string, unknown>);
      continue;
    }
    const value = message[field.name];
    switch (field.kind) {
      case STRING:
        if (typeof value !== "string") throw bail;
        if (value.length === 0) break;
        writeTag(field.tag);
        writeString(value);
        break;
      case BOOL:
        if (typeof value !== "boolean") throw bail;
        if (!value) break;
        writeTag(field.tag);
        output[end++] = 1;
        break;
      case INT32:
        if (typeof value !== "number" || (value | 0) !== value) throw bail;
        if (value === 0) break;
        writeTag(field.tag);
        if (value > 0) writeVarint(value);
        else writeVarint64(value >>> 0, 0xffffffff);
        break;
      case INT64:
        if (typeof value !== "bigint") throw bail;
        if (value === 0n) break;
        writeTag(field.tag);
        writeInt64(value);
        break;
      case MESSAGE:
        if (value === undefined) break;
        writeTag(field.tag);
        writeDelimited(field.plan as Plan, value as Record<string, unknown>);
        break;
      case OPAQUE: {
        if (value === undefined) break;
        const desc = field.message as DescMessage;
        if ((value as Message | null)?.$typeName !== desc.typeName) throw bail;
        let bytes: Uint8Array;
        try {
          bytes = toBinary(desc, value as Message);
        } catch {
          // protobuf-es writes the whole message again, and throws what it throws.
          throw bail;
        }
        writeTag(field.tag);
        writeVarint(bytes.byteLength);
        room(bytes.byteLength);
        output.set(bytes, end);
        end += bytes.byteLength;
        break;
      }
      case STRING_LIST:
        if (!Array.isArray(value)) throw bail;
        // Each item is written, an empty one too.
        for (const item of value) {
          if (typeof item !== "string") throw bail;
          writeTag(field.tag);
          writeString(item);
        }
        break;
      default:
        if (!Array.isArray(value)) throw bail;
        for (const item of value) {
          writeTag(field.tag);
          writeDelimited(field.plan as Plan, item);
        }
    }
  }
}

/** A field's tag, with room made for it and for a varint after it (5 + 10 bytes). */
function writeTag(tag: number): void {
  room(15);
  writeVarint(tag);
}

/** A non-negative integer below 2^53; room must have been made. */
function writeVarint(value: number): void {
  while (value > 0x7f) {
    const low = value % 0x80;
    output[end++] = low | 0x80;
    value = (value - low) / 0x80;
  }
  output[end++] = value;
}

/** The 64 bits `high:low` (each unsigned 32-bit); room must have been made. */
function writeVarint64(low: number, high: number): void {
  for (let i = 0; i < 4; i++) {
    output[end++] = (low & 0x7f) | 0x80;
    low >>>= 7;
  }
  // Bits 28–34: four from low, three from high.
  let byte = (low & 0x0f) | ((high & 0x07) << 4);
  high >>>= 3;
  while (high !== 0) {
    output[end++] = byte | 0x80;
    byte = high & 0x7f;
    high >>>= 7;
  }
  output[end++] = byte;
}

const int64Min = -(2n ** 63n);
const int64Max = 2n ** 63n - 1n;
const safeMax = BigInt(Number.MAX_SAFE_INTEGER);

function writeInt64(value: bigint): void {
  if (value > 0n && value <= safeMax) {
    writeVarint(Number(value));
    return;
  }
  if (value < int64Min || value > int64Max) throw bail;
  const bits = BigInt.asUintN(64, value);
  writeVarint64(Number(bits & 0xffffffffn), Number(bits >> 32n));
}

function writeString(text: string): void {
  const length = text.length;
  // At most 3 bytes per UTF-16 unit; below 128 bytes the length takes one byte.
  room(5 + 3 * length);
  if (3 * length < 0x80) {
    const start = end + 1;
    let stop = start;
    for (let i = 0; i < length; i++) {
      const unit = text.charCodeAt(i);
      if (unit >= 0x80) {
        stop = start + output.write(text, start, "utf8");
        break;
      }
      output[stop++] = unit;
    }
    output[end] = stop - start;
    end = stop;
    return;
  }
  writeVarint(Buffer.byteLength(text, "utf8"));
  end += output.write(text, end, "utf8");
}

/** A message with its length before it. */
function writeDelimited(plan: Plan, message: Record<string, unknown>): void {
  room(1);
  const lengthAt = end++;
  writeMessage(plan, message);
  const length = end - lengthAt - 1;
  if (length < 0x80) {
    output[lengthAt] = length;
    return;
  }
  let size = 1;
  for (let rest = length >>> 7; rest !== 0; rest >>>= 7) size++;
  room(size - 1);
  output.copyWithin(lengthAt + size, lengthAt + 1, end);
  end += size - 1;
  const after = end;
  end = lengthAt;
  writeVarint(length);
  end = after;
}
