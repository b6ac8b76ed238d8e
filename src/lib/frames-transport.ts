import net from "node:net";
import type { DescMethodUnary } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type Interceptor,
  type Transport,
  type UnaryResponse,
} from "@connectrpc/connect";
import { errorFromJsonBytes } from "@connectrpc/connect/protocol-connect";
import { codecFor } from "./codec.js";
import {
  encodeFrame,
  encodeRequest,
  FrameKind,
  FrameReader,
  FrameWriter,
  framesPreface,
  writeSpacingMs,
} from "./frames.js";
import {
  answered,
  createUnaryTransport,
  requestHeaders,
  type SendUnary,
  whenCancelled,
} from "./unary-transport.js";

export interface FramesTransportOptions {
  /** `http://host:port` of the service (the port its HTTP and gRPC listen on). */
  readonly baseUrl: string;
  /** The deadline of a call that names none. */
  readonly defaultTimeoutMs: number;
  readonly interceptors?: readonly Interceptor[];
  /** Streaming calls go here (frames carry unary calls only). */
  readonly streamTransport: Transport;
  /** Largest answer accepted. */
  readonly readMaxBytes?: number;
  /** An idle connection is closed after this long. */
  readonly idleTimeoutMs?: number;
  /** Opens a connection to the service: `net.connect` unless given (tests bind its source port). */
  readonly dial?: (options: net.TcpNetConnectOpts) => net.Socket;
}

interface Pending {
  readonly method: DescMethodUnary;
  readonly resolve: (message: UnaryResponse["message"]) => void;
  readonly reject: (err: ConnectError) => void;
  /** The server refused the call unrun (it drains): it may be sent again elsewhere. */
  readonly refused?: (err: ConnectError) => void;
}

/** One TCP connection carrying many calls at once. */
class Connection {
  private readonly socket: net.Socket;
  private readonly writer: FrameWriter;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  closed = false;
  /** The server drains: the calls in flight finish here, new ones open a new connection. */
  draining = false;

  constructor(
    host: string,
    port: number,
    readMaxBytes: number,
    idleTimeoutMs: number,
    dial: (options: net.TcpNetConnectOpts) => net.Socket,
  ) {
    this.socket = dial({ host, port, noDelay: true, keepAlive: true });
    // A port nobody listens on, dialled from the same host, can be connected
    // to itself: TCP's simultaneous open, when the system picks that very
    // port as the source (the services' default ports are in Linux's
    // ephemeral range). The socket would read its own requests until their
    // deadlines and hold the port, so the service could not listen on it
    // again. Such a connection is dropped at once, as Go's net package does.
    this.socket.once("connect", () => {
      const { localAddress, localPort, remoteAddress, remotePort } = this.socket;
      if (localPort === remotePort && localAddress === remoteAddress) {
        this.socket.destroy(new Error("connected to itself: nothing listens there"));
      }
    });
    this.writer = new FrameWriter(this.socket, writeSpacingMs);
    this.socket.write(framesPreface);
    const reader = new FrameReader(
      readMaxBytes,
      (kind, id, body) => this.answer(kind, id, body),
      (_kind, id) =>
        this.settle(id)?.reject(
          new ConnectError(`answer larger than ${readMaxBytes} bytes`, Code.ResourceExhausted),
        ),
    );
    this.socket.on("data", (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (err) {
        this.socket.destroy(err as Error);
      }
    });
    // Checked at every idle period, not once: a call that outlasts one (a
    // long model reply) must not leave the connection open for good once it
    // ends. Closed before it is ended, so a call made meanwhile opens a new
    // one rather than write to a connection that can no longer send.
    this.socket.setTimeout(idleTimeoutMs);
    this.socket.on("timeout", () => {
      if (this.pending.size > 0) return;
      this.closed = true;
      this.socket.end();
    });
    let cause: Error | undefined;
    this.socket.on("error", (err) => {
      cause = err;
    });
    // The server ends a connection when it drains: new calls go to a new one.
    let ended = false;
    this.socket.once("end", () => {
      ended = true;
      this.closed = true;
    });
    this.socket.once("close", () => {
      this.closed = true;
      const error = new ConnectError(
        `connection to ${host}:${port} closed${cause ? `: ${cause.message}` : ""}`,
        Code.Unavailable,
        undefined,
        undefined,
        cause,
      );
      // A draining server ends a connection once it has no call in flight,
      // and refuses, unrun, what arrives after: a call still unanswered when
      // it ended cleanly went out as it closed, and goes once more on a new
      // connection (to another replica, behind a Service), as a refused one
      // does. Every chat.v1 call may be sent again (a server that crashed
      // mid-call ends its connections the same way).
      const unrun = ended && cause === undefined;
      for (const pending of this.pending.values()) {
        (unrun ? (pending.refused ?? pending.reject) : pending.reject)(error);
      }
      this.pending.clear();
    });
  }

  /** Sends a request; `cancel` takes it back (the server is told). */
  send(
    method: DescMethodUnary,
    path: string,
    timeoutMs: number,
    headers: string[],
    message: Uint8Array,
    pending: Omit<Pending, "method">,
  ): (reason: ConnectError) => void {
    const id = (this.nextId + 1) >>> 0;
    // Encoded first: a request the format cannot carry throws before it is pending.
    const frame = encodeRequest(id, { timeoutMs, path, headers, message });
    this.nextId = id;
    this.pending.set(id, { method, ...pending });
    this.writer.send(frame);
    return (reason) => {
      const cancelled = this.settle(id);
      if (cancelled === undefined) return;
      if (!this.closed) this.writer.send(encodeFrame(FrameKind.Cancel, id, new Uint8Array(0)));
      cancelled.reject(reason);
    };
  }

  private settle(id: number): Pending | undefined {
    const pending = this.pending.get(id);
    this.pending.delete(id);
    return pending;
  }

  private answer(kind: number, id: number, body: Buffer) {
    const pending = this.settle(id);
    if (pending === undefined) return;
    if (kind === FrameKind.Ok) {
      try {
        pending.resolve(codecFor(pending.method.output).decode(body));
      } catch (err) {
        pending.reject(ConnectError.from(err, Code.Internal));
      }
      return;
    }
    const fallback = new ConnectError("malformed error answer", Code.Internal);
    let error: ConnectError;
    try {
      error = errorFromJsonBytes(body, undefined, fallback);
    } catch {
      error = fallback;
    }
    if (kind === FrameKind.Refused) {
      this.draining = true;
      (pending.refused ?? pending.reject)(error);
      return;
    }
    pending.reject(error);
  }
}

/**
 * A client transport for unary calls over lean frames (see frames.ts): one
 * connection per service, calls multiplexed on it, requests written in
 * batches. The generated clients use it like any transport; streaming calls
 * go to `streamTransport`. A broken connection fails its calls with
 * Unavailable, and the next call opens a new one, so a restarted service is
 * used again without restarting the caller.
 */
export function createFramesTransport(options: FramesTransportOptions): Transport {
  const url = new URL(options.baseUrl);
  if (url.protocol !== "http:") throw new Error("frames run over cleartext http:// URLs only");
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const port = Number(url.port || 80);
  const readMaxBytes = options.readMaxBytes ?? 4 * 1024 * 1024;
  const idleTimeoutMs = options.idleTimeoutMs ?? 30_000;
  const dial = options.dial ?? net.connect;
  let connection: Connection | undefined;
  const connected = () => {
    if (connection === undefined || connection.closed || connection.draining) {
      connection = new Connection(host, port, readMaxBytes, idleTimeoutMs, dial);
    }
    return connection;
  };

  const send: SendUnary = (req) =>
    new Promise((resolve, reject) => {
      const method = req.method as DescMethodUnary;
      const { timeoutMs, pairs: headers } = requestHeaders(req, options.defaultTimeoutMs);
      let message: Uint8Array;
      try {
        message = codecFor(method.input).encode(req.message);
      } catch (err) {
        reject(ConnectError.from(err, Code.Internal));
        return;
      }
      let cancel: (reason: ConnectError) => void = () => {};
      const timer = setTimeout(
        () => cancel(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
        timeoutMs,
      );
      let stopListening: (() => void) | undefined;
      const done = () => {
        clearTimeout(timer);
        stopListening?.();
      };
      const fail = (err: ConnectError) => {
        done();
        reject(err);
      };
      // A call a draining server refused unrun goes once more, on a new
      // connection: behind a Service, to another replica (a rollout's new pod).
      const dispatch = (again: boolean) => {
        cancel = connected().send(method, req.url, timeoutMs, headers, message, {
          resolve: (out) => {
            done();
            resolve(answered(req, out));
          },
          reject: fail,
          ...(again ? {} : { refused: () => dispatch(true) }),
        });
      };
      try {
        dispatch(false);
      } catch (err) {
        // A header or path too long for the format.
        clearTimeout(timer);
        reject(ConnectError.from(err, Code.InvalidArgument));
        return;
      }
      stopListening = whenCancelled(req, (err) => cancel(err));
    });

  return createUnaryTransport({
    send,
    defaultTimeoutMs: options.defaultTimeoutMs,
    streamTransport: options.streamTransport,
    ...(options.interceptors === undefined ? {} : { interceptors: options.interceptors }),
  });
}
