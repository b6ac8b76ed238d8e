import type net from "node:net";

/**
 * The wire format of the lean frames protocol between the gateway and the
 * services: unary RPCs multiplexed over one TCP connection, the messages in
 * protobuf binary, errors as Connect error JSON.
 *
 * A connection starts with the client's preface, then both sides send frames:
 *
 *     u32 length (of what follows) · u8 kind · u32 call id · body
 *
 * A request's body is `u32 timeout ms (0: none) · u8 path length · path ·
 * u8 header count · (u8 name length · name · u16 value length · value)* ·
 * message`; a cancel has no body; an answer's body is the response message
 * (kind Ok) or the error JSON (kind Error, or Refused: a draining server
 * that did not run the call, which may go to another connection; a client
 * that does not know the kind reads it as an error). Numbers are big-endian.
 */
export const framesPreface = Buffer.from("CMRPC/1\n");

export const FrameKind = { Request: 1, Cancel: 2, Ok: 3, Error: 4, Refused: 5 } as const;

/** Length field, kind and call id. */
const headerBytes = 9;

/** A frame with `body` as its body. */
export function encodeFrame(kind: number, id: number, body: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(headerBytes + body.byteLength);
  frame.writeUInt32BE(5 + body.byteLength, 0);
  frame[4] = kind;
  frame.writeUInt32BE(id, 5);
  frame.set(body, headerBytes);
  return frame;
}

/** The parts of a request frame's body. */
export interface RequestBody {
  readonly timeoutMs: number;
  readonly path: string;
  /** Names and values, alternating. */
  readonly headers: string[];
  readonly message: Uint8Array;
}

/** A request frame; header names and values longer than the format allows are refused. */
export function encodeRequest(id: number, request: RequestBody): Buffer {
  const path = Buffer.from(request.path, "latin1");
  const headers = request.headers.map((h) => Buffer.from(h, "latin1"));
  let size = headerBytes + 4 + 1 + path.length + 1 + request.message.byteLength;
  for (let i = 0; i < headers.length; i += 2) {
    size += 3 + (headers[i] as Buffer).length + (headers[i + 1] as Buffer).length;
  }
  if (path.length > 255 || headers.length / 2 > 255) throw new RangeError("request too large");
  const frame = Buffer.allocUnsafe(size);
  frame.writeUInt32BE(size - 4, 0);
  frame[4] = FrameKind.Request;
  frame.writeUInt32BE(id, 5);
  let at = frame.writeUInt32BE(request.timeoutMs, headerBytes);
  frame[at++] = path.length;
  at += path.copy(frame, at);
  frame[at++] = headers.length / 2;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as Buffer;
    const value = headers[i + 1] as Buffer;
    if (name.length > 255 || value.length > 65_535) throw new RangeError("header too large");
    frame[at++] = name.length;
    at += name.copy(frame, at);
    at = frame.writeUInt16BE(value.length, at);
    at += value.copy(frame, at);
  }
  frame.set(request.message, at);
  return frame;
}

/** Reads a request frame's body; throws a RangeError when it is malformed. */
export function decodeRequest(body: Buffer): RequestBody {
  const timeoutMs = body.readUInt32BE(0);
  const pathEnd = 5 + body.readUInt8(4);
  const path = body.toString("latin1", 5, pathEnd);
  const count = body.readUInt8(pathEnd);
  let at = pathEnd + 1;
  const headers: string[] = [];
  for (let i = 0; i < count; i++) {
    const nameLength = body.readUInt8(at);
    const valueAt = at + 1 + nameLength + 2;
    const valueLength = body.readUInt16BE(valueAt - 2);
    const end = valueAt + valueLength;
    if (end > body.length) throw new RangeError("truncated header");
    headers.push(
      body.toString("latin1", at + 1, valueAt - 2),
      body.toString("latin1", valueAt, end),
    );
    at = end;
  }
  return { timeoutMs, path, headers, message: body.subarray(at) };
}

/**
 * Cuts a byte stream into frames. A frame longer than `maxFrameBytes` is
 * skipped unread and reported to `onTooLarge` with its kind and id.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private skip = 0;
  /**
   * Bytes to buffer before looking again: a header's, or the whole frame
   * whose header came. Chunks of a frame still arriving are joined once, when
   * it is whole: joined at each chunk, a large frame sent a few bytes at a
   * time cost time in the square of its size.
   */
  private needed = headerBytes;

  constructor(
    private readonly maxFrameBytes: number,
    private readonly onFrame: (kind: number, id: number, body: Buffer) => void,
    private readonly onTooLarge: (kind: number, id: number) => void,
  ) {}

  push(chunk: Buffer): void {
    if (this.skip > 0) {
      const n = Math.min(this.skip, chunk.length);
      this.skip -= n;
      chunk = chunk.subarray(n);
    }
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered < this.needed) return;
    let data = this.chunks.length === 1 ? chunk : Buffer.concat(this.chunks, this.buffered);
    let at = 0;
    this.needed = headerBytes;
    while (data.length - at >= headerBytes) {
      const length = data.readUInt32BE(at);
      const kind = data[at + 4] as number;
      const id = data.readUInt32BE(at + 5);
      if (length < 5) throw new RangeError("malformed frame");
      if (length + 4 > this.maxFrameBytes) {
        this.onTooLarge(kind, id);
        const available = data.length - at - headerBytes;
        const rest = length - 5;
        if (rest > available) {
          this.skip = rest - available;
          at = data.length;
        } else {
          at += headerBytes + rest;
        }
        continue;
      }
      if (data.length - at < length + 4) {
        this.needed = length + 4;
        break;
      }
      this.onFrame(kind, id, data.subarray(at + headerBytes, at + 4 + length));
      at += length + 4;
    }
    data = data.subarray(at);
    this.chunks = data.length === 0 ? [] : [data];
    this.buffered = data.length;
  }

  /** Whether part of a frame came and the rest has not yet. */
  get partial(): boolean {
    return this.buffered > 0 || this.skip > 0;
  }
}

/**
 * The default least time between two writes of a connection: 0, each
 * event-loop turn's frames in one write. A spacing of 1 ms (each write
 * carrying what queued up in the last millisecond) gave about 10 % more
 * chats/s on a slow, CPU-bound machine; on a faster one it held every hop's
 * calls back instead: `make bench-go` gave the chain 7,595-9,116 req/s in
 * twelve autocannon runs with it and 9,080-10,622 in seven without, at no
 * more CPU per chat.
 */
export const writeSpacingMs = 0;

/** Most bytes a connection may hold unwritten (the kernel's buffers are full) before it is dropped. */
export const maxUnwrittenBytes = 8 * 1024 * 1024;

/**
 * Queues frames for a socket and writes them together, one write for many
 * calls: at the end of the event-loop turn when the last write was at least
 * `spacingMs` ago (so a lone call is not delayed), else once that much time
 * has passed. Under load the writes of a connection are thus spaced, each
 * carrying all that queued up meanwhile, which saves system calls on both
 * sides at the cost of at most `spacingMs` of latency.
 */
export class FrameWriter {
  private queue: Buffer[] = [];
  private scheduled = false;
  private lastWrite = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly socket: net.Socket,
    private readonly spacingMs = 0,
  ) {}

  send(frame: Buffer): void {
    this.queue.push(frame);
    if (this.scheduled) return;
    this.scheduled = true;
    const wait = this.lastWrite + this.spacingMs - performance.now();
    if (wait > 0) setTimeout(this.flush, wait);
    else setImmediate(this.flush);
  }

  private readonly flush = () => {
    this.scheduled = false;
    this.lastWrite = performance.now();
    const queue = this.queue;
    this.queue = [];
    if (this.socket.destroyed || !this.socket.writable) return;
    // A peer that stops reading (hung, stopped) must not make this process
    // buffer without end: past the limit the connection is dropped, its calls
    // fail as Unavailable, and the next call opens a new one.
    if (this.socket.writableLength > maxUnwrittenBytes) {
      this.socket.destroy(new Error("the peer stopped reading"));
      return;
    }
    this.socket.write(queue.length === 1 ? (queue[0] as Buffer) : Buffer.concat(queue));
  };
}
