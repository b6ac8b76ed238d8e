import type net from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { callerErrorOf, type ServedCall, type UnaryInvoker } from "./fast-unary.js";
import {
  decodeRequest,
  encodeFrame,
  FrameKind,
  FrameReader,
  FrameWriter,
  framesPreface,
  writeSpacingMs,
} from "./frames.js";
import type { Logger } from "./logger.js";
import { continueTrace, type TraceContext, traceLogFields } from "./trace.js";

/** The server side of the lean frames protocol, fed connections by the dual-protocol server. */
export interface FramesServer {
  /** Serves a connection whose first bytes (still unread) are the frames preface. */
  accept(socket: net.Socket): void;
  /** Answers the calls in flight, then closes each connection; new calls are refused. */
  drain(): void;
}

export interface FramesServerOptions {
  readonly readMaxBytes: number;
  readonly logger: Logger;
  /**
   * Most time a frame may take to arrive whole once its first bytes came
   * (REQUEST_TIMEOUT_MS, as an HTTP/1.1 request): past it the connection is
   * dropped, and what it held with it.
   */
  readonly frameTimeoutMs?: number;
}

/** Room for the path and trace headers beside the largest message. */
const frameOverheadBytes = 64 * 1024;

/** HTTP whitespace around a header value, which `Headers` drops. */
const edgeWhitespace = /^[\t\n\r ]+|[\t\n\r ]+$/g;

/**
 * Header `name` (lower case) of a request's name/value pairs, as
 * `Headers.get` answers it, without making a `Headers`: the values trimmed and
 * joined by ", ", null if absent.
 */
export function headerValue(pairs: readonly string[], name: string): string | null {
  let value: string | null = null;
  for (let i = 0; i < pairs.length; i += 2) {
    if ((pairs[i] as string).toLowerCase() === name) {
      const next = (pairs[i + 1] as string).replace(edgeWhitespace, "");
      value = value === null ? next : `${value}, ${next}`;
    }
  }
  return value;
}

const errorFrame = (id: number, error: ConnectError, kind: number = FrameKind.Error) =>
  encodeFrame(kind, id, errorToJsonBytes(error, {}));

/**
 * Serves unary calls to the recorded methods over lean frames (see
 * frames.ts): the same interceptors, deadlines and errors as the Connect
 * paths. Answers go out as they are ready, whatever the order of the
 * requests; a malformed stream closes its connection, never the process.
 */
export function createFramesServer(
  invoker: UnaryInvoker,
  options: FramesServerOptions,
): FramesServer {
  const { logger } = options;
  let draining = false;
  const connections = new Map<net.Socket, Map<number, ServedCall>>();
  /** When each connection's frame still arriving began to (performance.now()). */
  const partialSince = new Map<net.Socket, number>();
  const frameTimeoutMs = options.frameTimeoutMs ?? 30_000;
  // Checked now and then, as Node checks an HTTP/1.1 request's timeout: a
  // timer per frame would cost every call, and a frame may take its time.
  let sweep: NodeJS.Timeout | undefined;
  const sweepPartialFrames = () => {
    const now = performance.now();
    for (const [socket, since] of partialSince) {
      if (now - since <= frameTimeoutMs) continue;
      logger.warn(
        { timeoutMs: frameTimeoutMs },
        "frames connection dropped: a frame did not arrive whole in time",
      );
      socket.destroy();
    }
  };

  const endIfIdle = (socket: net.Socket, calls: Map<number, ServedCall>) => {
    if (draining && calls.size === 0) setImmediate(() => socket.end());
  };

  function serve(
    socket: net.Socket,
    writer: FrameWriter,
    calls: Map<number, ServedCall>,
    id: number,
    body: Buffer,
  ) {
    const started = performance.now();
    let path = "";
    let status = "ok";
    let trace: TraceContext | undefined;
    const answer = (frame: Buffer) => {
      calls.delete(id);
      writer.send(frame);
      if (logger.isLevelEnabled("info")) {
        const ms = Math.round((performance.now() - started) * 10) / 10;
        logger.info(
          // `code`, not `status`: a gRPC code's name, where HTTP lines have a number.
          { ...traceLogFields(trace), protocol: "frames", route: path, code: status, ms },
          "request",
        );
      }
      endIfIdle(socket, calls);
    };
    const refuse = (error: ConnectError, kind: number = FrameKind.Error) => {
      status = Code[error.code] ?? String(error.code);
      answer(errorFrame(id, error, kind));
    };
    // Answering would end the call in flight under that id: the stream is broken.
    if (calls.has(id)) throw new RangeError(`call id ${id} is in use`);
    // Not run: the client may send it to another replica (a rollout's new pod).
    if (draining) {
      return refuse(
        new ConnectError("the server is shutting down", Code.Unavailable),
        FrameKind.Refused,
      );
    }
    let request: ReturnType<typeof decodeRequest>;
    try {
      request = decodeRequest(body);
    } catch {
      return refuse(new ConnectError("malformed request frame", Code.InvalidArgument));
    }
    path = request.path;
    const fast = invoker.lookup(path);
    if (fast === undefined) {
      return refuse(new ConnectError(`${path} is not implemented`, Code.Unimplemented));
    }
    if (request.message.byteLength > options.readMaxBytes) {
      return refuse(
        new ConnectError(
          `message larger than ${options.readMaxBytes} bytes`,
          Code.ResourceExhausted,
        ),
      );
    }
    const pairs = request.headers;
    const header = () => {
      const made = new Headers();
      for (let i = 0; i < pairs.length; i += 2) {
        try {
          made.append(pairs[i] as string, pairs[i + 1] as string);
        } catch {
          // A name or value HTTP could not carry (a space in a name, a NUL in
          // a value) is dropped, as no HTTP request could have brought it;
          // thrown, it failed the call as UNKNOWN once the handler read it.
        }
      }
      return made;
    };
    trace = continueTrace(headerValue(pairs, "traceparent"), headerValue(pairs, "x-request-id"));
    const call = invoker.start(
      fast,
      request.message,
      header,
      trace,
      request.timeoutMs === 0 ? undefined : request.timeoutMs,
    );
    calls.set(id, call);
    call.done.then(
      (bytes) => {
        if (calls.get(id) === call) answer(encodeFrame(FrameKind.Ok, id, bytes));
      },
      (err: unknown) => {
        if (calls.get(id) === call) refuse(callerErrorOf(err));
      },
    );
  }

  return {
    accept(socket) {
      const calls = new Map<number, ServedCall>();
      connections.set(socket, calls);
      if (sweep === undefined) {
        sweep = setInterval(sweepPartialFrames, Math.min(5_000, frameTimeoutMs));
        sweep.unref();
      }
      const writer = new FrameWriter(socket, writeSpacingMs);
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 30_000);
      let prefaceLeft = framesPreface.length;
      const reader = new FrameReader(
        options.readMaxBytes + frameOverheadBytes,
        (kind, id, body) => {
          // A frame came whole: a partial one after it is timed from now,
          // not from when an earlier frame began (reads of a busy connection
          // may all end part way into a frame).
          partialSince.delete(socket);
          if (kind === FrameKind.Request) serve(socket, writer, calls, id, body);
          else if (kind === FrameKind.Cancel) {
            const call = calls.get(id);
            calls.delete(id);
            call?.abort(new ConnectError("cancelled by the client", Code.Canceled));
            endIfIdle(socket, calls);
          } else throw new RangeError(`unexpected frame kind ${kind}`);
        },
        (_kind, id) => {
          partialSince.delete(socket);
          writer.send(
            errorFrame(
              id,
              new ConnectError(
                `message larger than ${options.readMaxBytes} bytes`,
                Code.ResourceExhausted,
              ),
            ),
          );
        },
      );
      socket.on("data", (chunk: Buffer) => {
        if (prefaceLeft > 0) {
          const n = Math.min(prefaceLeft, chunk.length);
          const offset = framesPreface.length - prefaceLeft;
          if (!chunk.subarray(0, n).equals(framesPreface.subarray(offset, offset + n))) {
            socket.destroy();
            return;
          }
          prefaceLeft -= n;
          chunk = chunk.subarray(n);
        }
        try {
          reader.push(chunk);
        } catch (err) {
          logger.warn({ err }, "malformed frames stream: connection closed");
          socket.destroy();
          return;
        }
        if (!reader.partial) partialSince.delete(socket);
        else if (!partialSince.has(socket)) partialSince.set(socket, performance.now());
      });
      socket.on("error", () => socket.destroy());
      socket.once("close", () => {
        connections.delete(socket);
        partialSince.delete(socket);
        if (connections.size === 0) {
          clearInterval(sweep);
          sweep = undefined;
        }
        for (const call of calls.values()) {
          call.abort(new ConnectError("client went away", Code.Canceled));
        }
        calls.clear();
      });
      endIfIdle(socket, calls);
    },
    drain() {
      draining = true;
      for (const [socket, calls] of connections) endIfIdle(socket, calls);
    },
  };
}
