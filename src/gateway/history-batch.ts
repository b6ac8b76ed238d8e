import { create } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import {
  type HistoryServiceAppendBatchRequest,
  HistoryServiceAppendBatchRequestSchema,
  type HistoryServiceAppendRequest,
} from "../../gen/chat/v1/history_pb.js";
import { codecFor } from "../lib/codec.js";

/**
 * Most chats in one AppendBatch; a full batch is sent at once. This bounds
 * how long a chat waits under load (128 at 8,000 chats/s: 16 ms, not the
 * whole window), and with it how much of the gateway's young generation
 * lives through two scavenges into the old one. Under `make bench` 128
 * instead of 256 cut the gateway's promotions to the old generation from
 * ~0.2-1.5 MB to ~0.01 MB per scavenge: 43 MB less peak RSS, ~10 % less
 * gateway CPU per chat, ~3 µs more for the history (more, smaller
 * transactions).
 */
export const maxBatchChats = 128;
/**
 * Most bytes of chats in one AppendBatch: the batch stays under the
 * services' default 1 MiB message limit.
 */
export const maxBatchBytes = 768 * 1024;

/** A chat as history's Append takes it, and as an AppendBatch carries it. */
export type Entry = HistoryServiceAppendRequest;
const batchCodec = codecFor(HistoryServiceAppendBatchRequestSchema);

/** An AppendBatch request with `entry` as its one entry, encoded: what GatheredBatch.add takes. */
export const encodeAlone = (entry: Entry): Uint8Array =>
  batchCodec.encode(create(HistoryServiceAppendBatchRequestSchema, { entries: [entry] }));

/**
 * The chats gathered for one AppendBatch, kept as the request's wire bytes
 * (each chat encoded when it is recorded, as a request of one entry) and
 * each chat's user. An AppendBatch under way then holds one buffer, outside
 * V8's heap, instead of each chat's objects (its record, strings, trace,
 * request message and timestamp) until history answers. Under `make bench`
 * a batch often outlived two scavenges, which moved those objects into the
 * gateway's old generation: at ~10,000 chats/s it grew by ~1.5 MB/s, and the
 * gateway's peak RSS was 111–148 MB in six runs against 109–112 MB in six
 * with the bytes, for the same CPU per chat. A chat is decoded again only if
 * it has to be retried.
 */
export class GatheredBatch {
  private buffer = Buffer.allocUnsafe(8 * 1024);
  private used = 0;
  readonly users: string[] = [];
  /** Where each chat's bytes start in `buffer`. */
  private readonly starts: number[] = [];

  get count(): number {
    return this.users.length;
  }

  get size(): number {
    return this.used;
  }

  /** Adds a chat: `bytes` are an AppendBatch request with the chat as its one entry. */
  add(userId: string, bytes: Uint8Array): void {
    if (this.used + bytes.length > this.buffer.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.used + bytes.length, this.buffer.length * 2));
      this.buffer.copy(grown, 0, 0, this.used);
      this.buffer = grown;
    }
    this.buffer.set(bytes, this.used);
    this.starts.push(this.used);
    this.used += bytes.length;
    this.users.push(userId);
  }

  /**
   * The AppendBatch request: the gathered requests of one entry each, one
   * after the other, are the encoding of one request with them all. They go
   * as unknown bytes, which protobuf-es writes as they are, after the tag of
   * their field (entries, 1): so without the first chat's own tag.
   * Transports that encode the message send them so; the in-process one
   * decodes such a message first (see local-transport.ts).
   */
  request(): HistoryServiceAppendBatchRequest {
    // Only what became of each chat is read: not the stored entries.
    const request = create(HistoryServiceAppendBatchRequestSchema, { omitEntries: true });
    request.$unknown = [
      { no: 1, wireType: WireType.LengthDelimited, data: this.buffer.subarray(1, this.used) },
    ];
    return request;
  }

  /** The `i`th chat, decoded. */
  entry(i: number): Entry {
    const bytes = this.buffer.subarray(this.starts[i], this.starts[i + 1] ?? this.used);
    return (batchCodec.decode(bytes) as HistoryServiceAppendBatchRequest).entries[0] as Entry;
  }

  entries(): Entry[] {
    return this.users.map((_, i) => this.entry(i));
  }
}

/** About what a chat weighs in an AppendBatch (its strings in UTF-8, and room for the rest). */
export const entryBytes = (entry: Entry) =>
  Buffer.byteLength(entry.userId) +
  Buffer.byteLength(entry.text) +
  Buffer.byteLength(entry.reply) +
  entry.requestId.length +
  entry.traceparent.length +
  64;
