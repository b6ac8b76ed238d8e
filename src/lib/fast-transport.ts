import http from "node:http";
import https from "node:https";
import type { DescMethodUnary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor, type Transport } from "@connectrpc/connect";
import { codeFromHttpStatus, errorFromJsonBytes } from "@connectrpc/connect/protocol-connect";
import { codecFor } from "./codec.js";
import { urlHostAddress } from "./local-host.js";
import {
  cancelledBefore,
  createUnaryTransport,
  requestHeaders,
  type SendUnary,
  whenCancelled,
} from "./unary-transport.js";

export interface FastTransportOptions {
  /** `http://host:port` of the service. */
  readonly baseUrl: string;
  /** The deadline of a call that names none. */
  readonly defaultTimeoutMs: number;
  readonly interceptors?: readonly Interceptor[];
  /** Streaming calls go here (the lean path is unary only). */
  readonly streamTransport: Transport;
  /** Most connections kept open to the service. */
  readonly maxSockets?: number;
  /** For an https:// service: the CA its certificate is checked against (the system's when absent). */
  readonly ca?: Buffer;
}

/** Whether a request failed because its connection was closed before any answer. */
function isClosedUnderfoot(err: Error): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ECONNRESET" || code === "EPIPE";
}

/**
 * A Connect-protocol client transport for unary calls in binary over pooled
 * HTTP/1.1 keep-alive connections (cleartext, or TLS for an https:// URL): the same wire format any Connect server
 * accepts (timeouts in `connect-timeout-ms`, errors as Connect error JSON),
 * with one request and one small allocation set per call. The generated
 * clients use it like any transport; streaming calls are handed to
 * `streamTransport`.
 */
export function createFastTransport(options: FastTransportOptions): Transport {
  const url = new URL(options.baseUrl);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error("the fast transport speaks HTTP/1.1 over http:// or https:// only");
  }
  const secure = url.protocol === "https:";
  const host = urlHostAddress(url);
  const port = Number(url.port || (secure ? 443 : 80));
  const prefix = url.pathname.replace(/\/+$/, "");
  const agentOptions = {
    keepAlive: true,
    maxSockets: options.maxSockets ?? 256,
    maxFreeSockets: options.maxSockets ?? 256,
    scheduling: "lifo" as const,
    // Idle sockets are dropped before the server's keep-alive timeout (65 s).
    timeout: 30_000,
  };
  const agent = secure
    ? new https.Agent({
        ...agentOptions,
        ...(options.ca === undefined ? {} : { ca: options.ca }),
        // HTTP/1.1 on purpose: the server's ALPN would otherwise pick h2.
        ALPNProtocols: ["http/1.1"],
      })
    : new http.Agent(agentOptions);
  const request = secure ? https.request : http.request;

  // The deadline travels in the request's `connect-timeout-ms` header, as on the wire.
  const send: SendUnary = (req) =>
    new Promise((resolve, reject) => {
      const method = req.method as DescMethodUnary;
      const { timeoutMs, pairs } = requestHeaders(req, options.defaultTimeoutMs);
      const body = codecFor(method.input).encode(req.message);
      const headers: Record<string, string | number> = {
        "content-type": "application/proto",
        "connect-protocol-version": "1",
        "content-length": body.byteLength,
        "connect-timeout-ms": timeoutMs,
      };
      for (let i = 0; i < pairs.length; i += 2) {
        headers[pairs[i] as string] = pairs[i + 1] as string;
      }
      // A call cancelled before it began is not sent at all.
      const early = cancelledBefore(req);
      if (early !== undefined) {
        reject(early);
        return;
      }
      let settled = false;
      let stopListening: (() => void) | undefined;
      const settle = () => {
        settled = true;
        clearTimeout(timer);
        stopListening?.();
      };
      const fail = (err: ConnectError) => {
        if (settled) return;
        settle();
        outgoing.destroy();
        reject(err);
      };
      let outgoing: http.ClientRequest;
      const attempt = () => {
        outgoing = request({ agent, host, port, method: "POST", path: req.url, headers }, (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (chunk: Buffer) => chunks.push(chunk));
          res.once("error", (err) => fail(ConnectError.from(err, Code.Unavailable)));
          res.once("end", () => {
            if (settled) return;
            settle();
            const bytes = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
            const status = res.statusCode ?? 0;
            if (status === 200) {
              try {
                resolve({
                  stream: false,
                  service: req.service,
                  method,
                  header: new Headers(),
                  trailer: new Headers(),
                  message: codecFor(method.output).decode(bytes),
                });
              } catch (err) {
                reject(ConnectError.from(err, Code.Internal));
              }
              return;
            }
            const fallback = new ConnectError(`HTTP ${status}`, codeFromHttpStatus(status));
            let error: ConnectError;
            try {
              error = errorFromJsonBytes(bytes, undefined, fallback);
            } catch {
              error = fallback;
            }
            reject(error);
          });
        });
        const sent = outgoing;
        sent.once("error", (err) => {
          // A kept-alive connection the service closed as this call went out
          // on it (it drains, or its idle timeout ended it): no answer came,
          // and every call of chat.v1 may be sent again, so it goes on
          // another connection, as Node's documentation advises.
          if (sent.reusedSocket && !settled && isClosedUnderfoot(err)) attempt();
          else fail(ConnectError.from(err, Code.Unavailable));
        });
        sent.end(body);
      };
      try {
        attempt();
      } catch (err) {
        // Node refuses here a header value `Headers` lets through (a control
        // character): nothing was sent, and no deadline or listener is left
        // to fire on a request that does not exist.
        reject(ConnectError.from(err, Code.Internal));
        return;
      }
      const timer = setTimeout(
        () => fail(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
        timeoutMs,
      );
      stopListening = whenCancelled(req, fail);
    });

  return createUnaryTransport({
    send,
    defaultTimeoutMs: options.defaultTimeoutMs,
    pathPrefix: prefix,
    streamTransport: options.streamTransport,
    ...(options.interceptors === undefined ? {} : { interceptors: options.interceptors }),
  });
}
