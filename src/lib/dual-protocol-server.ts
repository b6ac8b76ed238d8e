import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { framesPreface } from "./frames.js";
import type { FramesServer } from "./frames-server.js";
import { RequestsInFlight } from "./requests-in-flight.js";

/** A request handler that serves both HTTP/1.1 and HTTP/2 compat requests. */
export type DualHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/**
 * A TCP server that speaks cleartext HTTP/2 (prior knowledge, as gRPC uses)
 * and HTTP/1.1 on the same port. Node's http2 server refuses HTTP/1.1 without
 * TLS, so each connection's first bytes are read: the HTTP/2 connection
 * preface ("PRI * HTTP/2.0") goes to an http2 server, anything else to an
 * http1 server. Both call the same handler, which Fastify gets through
 * `serverFactory`. With `frames`, connections that open with the lean frames
 * preface (frames.ts) go to it.
 *
 * It carries the close helpers Fastify looks for, so `fastify.close()`
 * lets in-flight requests finish and then lets the process exit.
 */
export interface DualProtocolServer extends net.Server {
  /**
   * Starts draining: closes HTTP/1.1 connections that have no request in
   * flight, and every other one as soon as its response is sent.
   */
  closeIdleConnections(): void;
  /** Destroys every connection at once. */
  closeAllConnections(): void;
  /** Sends GOAWAY on every HTTP/2 session: in-flight streams finish, no new ones start. */
  closeHttp2Sessions(): void;
}

export interface DualProtocolServerOptions {
  /** Tried first on every HTTP/1.1 request; what it declines goes to the handler. */
  readonly fastPath?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean;
  /** Takes the connections that open with the lean frames preface. */
  readonly frames?: FramesServer;
  /** Idle HTTP/2 sessions are closed after this long. */
  readonly http2SessionTimeoutMs?: number;
  /** Idle HTTP/1.1 keep-alive connections are closed after this long. */
  readonly keepAliveTimeoutMs?: number;
  /**
   * An HTTP/1.1 request whose headers and body take longer to arrive gets
   * 408, an HTTP/2 one has its stream cancelled, and a connection that
   * sends nothing for that long is closed (30 s).
   */
  readonly requestTimeoutMs?: number;
  /** Told of each HTTP/2 request cancelled by the request timeout. */
  readonly onHttp2RequestTimeout?: (req: http2.Http2ServerRequest) => void;
  /**
   * Paths whose HTTP/2 requests are streams of messages, sent as long as
   * the call lasts: not held to the request timeout.
   */
  readonly streamedRequestPaths?: ReadonlySet<string>;
}

/**
 * Node's options for an http1 server: the request timeout (headers
 * included), checked every 5 s at most, so a client that sends a byte now
 * and then, or nothing at all, cannot hold a connection for ever.
 */
export function requestTimeoutOptions(requestTimeoutMs = 30_000): http.ServerOptions {
  return {
    requestTimeout: requestTimeoutMs,
    headersTimeout: requestTimeoutMs,
    connectionsCheckingInterval: Math.min(5_000, requestTimeoutMs),
  };
}

const preface = Buffer.from("PRI * HTTP/2.0");

/** Whether `bytes` and `prefix` agree as far as both go. */
const agrees = (bytes: Buffer, prefix: Buffer) => {
  const n = Math.min(bytes.length, prefix.length);
  return bytes.subarray(0, n).equals(prefix.subarray(0, n));
};

type Protocol = "frames" | "http2" | "http1";

/**
 * Which protocol a connection that began with `bytes` speaks; undefined
 * while they are still the beginning of a preface ("P" may become
 * "PRI * HTTP/2.0" or "POST /…"), so more must come to tell.
 */
function protocolOf(bytes: Buffer, frames: boolean): Protocol | undefined {
  if (frames && agrees(bytes, framesPreface)) {
    return bytes.length >= framesPreface.length ? "frames" : undefined;
  }
  if (agrees(bytes, preface)) return bytes.length >= preface.length ? "http2" : undefined;
  return "http1";
}

/**
 * Once an HTTP/2 response is sent before its request was read to the end (a
 * message over the size limit, refused at its first bytes), the request's
 * stream is reset with NO_ERROR, as HTTP/2 provides for this (RFC 9113,
 * 8.1): the client stops sending, and the stream does not stay open for
 * ever, holding the session (and a graceful close) open with it.
 */
export function endUnreadRequest(req: http2.Http2ServerRequest): void {
  // Node's compat response sends its trailers, the last frame of every
  // response, on "wantTrailers": the reset goes after them (sent at once, it
  // would overtake them and the client would see no status). The response's
  // own "finish" waits for the whole stream to close, so never comes.
  req.stream.once("wantTrailers", () =>
    setImmediate(() => {
      if (req.complete || req.stream.closed) return;
      req.stream.close(http2.constants.NGHTTP2_NO_ERROR);
      // The stream would end only once what it holds unread was read; its
      // reset is sent on the next turn, then it is let go.
      setImmediate(() => req.stream.destroy());
    }),
  );
}

/**
 * An HTTP/2 request whose body has not all arrived `timeoutMs` after its
 * headers has its stream reset with CANCEL (the client sees CANCELLED), as
 * HTTP/1.1's request timeout answers 408: a client that stops half way
 * through a message does not hold it, and a stream slot, until the session
 * times out. The handler reads the body's end and answers to nobody.
 */
export function limitRequestTime(
  req: http2.Http2ServerRequest,
  timeoutMs: number,
  options: Pick<DualProtocolServerOptions, "onHttp2RequestTimeout" | "streamedRequestPaths"> = {},
): void {
  if (req.complete || options.streamedRequestPaths?.has(req.url.split("?", 1)[0] ?? "")) return;
  const timer = setTimeout(() => {
    if (req.complete || req.stream.closed) return;
    options.onHttp2RequestTimeout?.(req);
    req.stream.close(http2.constants.NGHTTP2_CANCEL);
    // As in endUnreadRequest: what the stream holds unread would keep it.
    setImmediate(() => req.stream.destroy());
  }, timeoutMs);
  req.once("end", () => clearTimeout(timer));
  req.stream.once("close", () => clearTimeout(timer));
}

/**
 * Most streams one HTTP/2 connection may have open at once: each may hold a
 * message of up to MAX_REQUEST_BYTES while it arrives, and Node's default
 * (2^32 - 1) let one connection hold any amount. 100 is what RFC 9113
 * advises as the least and what most servers take.
 */
export const http2MaxConcurrentStreams = 100;

/**
 * Closes an HTTP/2 session idle for `timeoutMs`: GOAWAY, then, if streams
 * still hold it open (a request that never ends), destroyed a moment later.
 */
export function closeIdleHttp2Session(session: http2.ServerHttp2Session, timeoutMs: number): void {
  session.setTimeout(timeoutMs, () => {
    session.close();
    setTimeout(() => session.destroy(), Math.min(5_000, timeoutMs)).unref();
  });
}

/** Creates the server; call `listen` on it as on any net.Server. */
export function createDualProtocolServer(
  handler: DualHandler,
  options: DualProtocolServerOptions = {},
): DualProtocolServer {
  const fastPath = options.fastPath;
  const h1 = http.createServer(
    requestTimeoutOptions(options.requestTimeoutMs),
    fastPath === undefined
      ? (handler as http.RequestListener)
      : (req, res) => {
          if (!fastPath(req, res)) handler(req, res);
        },
  );
  h1.keepAliveTimeout = options.keepAliveTimeoutMs ?? 65_000;
  // Node checks the request timeout only on a server that listened: it
  // starts the checks on "listening". This one never listens itself (it is
  // handed its connections), so it is told it did; closing the outer server
  // closes it, which stops them.
  h1.emit("listening");
  // The http1 server never listens itself, so Node does not track its
  // connections (closeIdleConnections would see none): count requests in
  // flight per socket here.
  const inFlight = new RequestsInFlight();
  h1.on("connection", (socket: net.Socket) => inFlight.open(socket));
  h1.on("request", (req: http.IncomingMessage, res: http.ServerResponse) =>
    inFlight.begin(req.socket, res),
  );

  const requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
  const h2 = http2.createServer(
    { settings: { maxConcurrentStreams: http2MaxConcurrentStreams } },
    (req, res) => {
      endUnreadRequest(req);
      limitRequestTime(req, requestTimeoutMs, options);
      handler(req, res);
    },
  );
  const sessions = new Set<http2.ServerHttp2Session>();
  const sessionTimeout = options.http2SessionTimeoutMs ?? 15 * 60_000;
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    closeIdleHttp2Session(session, sessionTimeout);
  });

  const sockets = new Set<net.Socket>();
  const undecided = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    undecided.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      undecided.delete(socket);
    });
    socket.on("error", () => socket.destroy());
    // A connection that does not tell its protocol in time is not kept for
    // ever: counted from the start (an idle timer would start again with
    // each byte of a preface that comes a byte at a time).
    const undecidedFor = setTimeout(() => socket.destroy(), requestTimeoutMs);
    socket.once("close", () => clearTimeout(undecidedFor));
    let head: Buffer | undefined;
    const onData = (chunk: Buffer) => {
      head = head === undefined ? chunk : Buffer.concat([head, chunk]);
      const protocol = protocolOf(head, options.frames !== undefined);
      if (protocol === undefined) return;
      undecided.delete(socket);
      clearTimeout(undecidedFor);
      socket.pause();
      socket.off("data", onData);
      socket.unshift(head);
      if (protocol === "frames") {
        options.frames?.accept(socket);
        socket.resume();
      } else if (protocol === "http2") {
        // The http2 session reads what is buffered on the socket itself; a
        // resumed socket would hand the preface to nobody.
        h2.emit("connection", socket);
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
  }) as DualProtocolServer;

  server.once("close", () => h1.close());
  server.closeIdleConnections = () => {
    inFlight.drain();
    for (const socket of undecided) socket.destroy();
    options.frames?.drain();
  };
  server.closeAllConnections = () => {
    for (const socket of sockets) socket.destroy();
  };
  server.closeHttp2Sessions = () => {
    for (const session of sessions) session.close();
  };
  return server;
}
