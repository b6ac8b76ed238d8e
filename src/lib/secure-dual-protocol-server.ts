import type http from "node:http";
import http2 from "node:http2";
import type net from "node:net";
import {
  closeIdleHttp2Session,
  type DualHandler,
  type DualProtocolServer,
  type DualProtocolServerOptions,
  endUnreadRequest,
  http2MaxConcurrentStreams,
  limitRequestTime,
  requestTimeoutOptions,
} from "./dual-protocol-server.js";
import { RequestsInFlight } from "./requests-in-flight.js";
import type { TlsCredentials } from "./tls.js";

/**
 * The TLS twin of createDualProtocolServer: an http2 secure server that also
 * takes HTTP/1.1 (ALPN offers h2 and http/1.1; a client that offers nothing
 * gets HTTP/1.1), so gRPC, gRPC-Web and Connect all work on one TLS port.
 * HTTP/1.1 requests try the fast path first, as in cleartext. It has the
 * same close helpers, so Fastify drains it the same way.
 */
export function createSecureDualProtocolServer(
  handler: DualHandler,
  credentials: TlsCredentials,
  options: DualProtocolServerOptions = {},
): DualProtocolServer {
  const fastPath = options.fastPath;
  const keepAliveTimeoutMs = options.keepAliveTimeoutMs ?? 65_000;
  // HTTP/1.1 requests in flight per socket, so that draining ends idle ones only.
  const inFlight = new RequestsInFlight();

  const requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
  const server = http2.createSecureServer(
    {
      cert: credentials.cert,
      key: credentials.key,
      allowHTTP1: true,
      // A client that does not finish its TLS handshake in time is dropped.
      handshakeTimeout: requestTimeoutMs,
      settings: { maxConcurrentStreams: http2MaxConcurrentStreams },
    },
    (req, res) => {
      if (req.httpVersionMajor === 1) {
        const socket = req.socket as net.Socket;
        inFlight.begin(socket, res);
        // With allowHTTP1, Node hands HTTP/1.1 requests over as http1 objects.
        const h1req = req as unknown as http.IncomingMessage;
        const h1res = res as unknown as http.ServerResponse;
        if (fastPath?.(h1req, h1res)) return;
      } else {
        endUnreadRequest(req);
        limitRequestTime(req, requestTimeoutMs, options);
      }
      handler(req, res);
    },
  );

  // HTTP/1.1 requests are timed as in cleartext (Node's own defaults here
  // are 5 minutes for a request and 1 for its headers); the checks start on
  // "listening", so these are set before.
  Object.assign(server, requestTimeoutOptions(requestTimeoutMs));

  const sockets = new Set<net.Socket>();
  server.on("secureConnection", (socket: net.Socket & { alpnProtocol?: string | false }) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    if (socket.alpnProtocol !== "h2") {
      inFlight.open(socket);
      socket.setTimeout(keepAliveTimeoutMs, () => {
        if (inFlight.idle(socket)) socket.destroy();
      });
    }
  });
  // A client that speaks no TLS (plain HTTP, say) is dropped, not left waiting.
  server.on("tlsClientError", (_err, socket) => socket.destroy());

  const sessions = new Set<http2.ServerHttp2Session>();
  const sessionTimeout = options.http2SessionTimeoutMs ?? 15 * 60_000;
  server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    closeIdleHttp2Session(session, sessionTimeout);
  });

  const dual = server as unknown as DualProtocolServer;
  dual.closeIdleConnections = () => {
    inFlight.drain();
  };
  dual.closeAllConnections = () => {
    for (const socket of sockets) socket.destroy();
  };
  dual.closeHttp2Sessions = () => {
    for (const session of sessions) session.close();
  };
  return dual;
}
