import { type DescMethodUnary, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor, type Transport } from "@connectrpc/connect";
import type { Logger } from "./logger.js";
import { callThen } from "./metrics.js";
import type { LocalService } from "./rpc-server.js";
import { continueTrace, formatTraceparent, traceLogFields } from "./trace.js";
import {
  answered,
  createUnaryTransport,
  type SendUnary,
  whenCancelled,
} from "./unary-transport.js";

export interface LocalTransportOptions {
  /** The service, as `localServiceOf` gives it. */
  readonly service: LocalService;
  /** The deadline of a call that names none. */
  readonly defaultTimeoutMs: number;
  readonly interceptors?: readonly Interceptor[];
}

/** `message` as the service would decode it from the wire, where it carries unknown fields. */
function asOnTheWire<T extends Parameters<typeof toBinary>[1]>(
  method: DescMethodUnary,
  message: T,
): T {
  if (message.$unknown === undefined || message.$unknown.length === 0) return message;
  return fromBinary(method.input, toBinary(method.input, message)) as T;
}

/**
 * A client transport to a service in the same process (`chatmesh all`): a
 * unary call goes to the service's invoker with the caller's headers, trace
 * and deadline, through the server's interceptors, with no socket between.
 * The request and response messages are handed over, not encoded, which
 * holds because neither the gateway nor the services change a message once
 * it is sent or returned. A request that carries fields as unknown bytes
 * (the history recorder's AppendBatch does) is decoded first, so the
 * handler sees what the wire would give it.
 * Streams go through the service's in-memory router, with the caller's
 * interceptors too. Cancelling the caller's signal cancels the handler's.
 * The service logs each call, as it logs one that comes over the wire.
 */
export function createLocalTransport(options: LocalTransportOptions): Transport {
  const { invoker } = options.service;
  const send: SendUnary = (req) => {
    const fast = invoker.lookup(req.url);
    if (fast === undefined) {
      return Promise.reject(new ConnectError(`${req.url} is not implemented`, Code.Unimplemented));
    }
    const timeoutMs = Number(req.header.get("connect-timeout-ms") ?? options.defaultTimeoutMs);
    const trace = continueTrace(req.header.get("traceparent"), req.header.get("x-request-id"));
    const call = invoker.call(
      fast,
      asOnTheWire(req.method as DescMethodUnary, req.message),
      () => {
        const header = new Headers(req.header);
        header.delete("connect-timeout-ms");
        return header;
      },
      trace,
      timeoutMs,
    );
    const stopListening = whenCancelled(req, (err) => call.abort(err));
    if (stopListening !== undefined) call.done.then(stopListening, stopListening);
    return call.done.then(
      (message) => answered(req, message),
      // As over the wire: whatever the handler threw arrives as a ConnectError.
      (err: unknown) => {
        throw ConnectError.from(err);
      },
    );
  };
  const { logger } = options.service;
  // The log level is set at start: below info, calls pay nothing for the lines.
  const interceptors = [
    ...(options.interceptors ?? []),
    ...(logger.isLevelEnabled("info") ? [logCalls(logger)] : []),
  ];
  return createUnaryTransport({
    send,
    defaultTimeoutMs: options.defaultTimeoutMs,
    streamTransport: options.service.streams(interceptors),
    interceptors,
  });
}

/**
 * One "request" line per call, in the service's log, when the call ends:
 * its trace, route, outcome (`code`: "ok" or the error's code) and
 * duration, as the service's lean frames path logs the calls it serves. The
 * trace is the one the handler gets: a call that comes without one is sent
 * on with the one made here.
 */
function logCalls(logger: Logger): Interceptor {
  return (next) => (req) => {
    const started = performance.now();
    const trace = continueTrace(req.header.get("traceparent"), req.header.get("x-request-id"));
    req.header.set("traceparent", formatTraceparent(trace));
    req.header.set("x-request-id", trace.requestId);
    const log = (err: unknown) => {
      logger.info(
        {
          ...traceLogFields(trace),
          protocol: "local",
          route: `/${req.method.parent.typeName}/${req.method.name}`,
          code: err === undefined ? "ok" : Code[ConnectError.from(err).code],
          ms: Math.round((performance.now() - started) * 10) / 10,
        },
        "request",
      );
    };
    return callThen(next, req, log);
  };
}
