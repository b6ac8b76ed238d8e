import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes, randomUUID } from "node:crypto";
import type { Interceptor } from "@connectrpc/connect";

/** What ties the log lines of one request together, in every process. */
export interface TraceContext {
  /** W3C trace id: 32 lowercase hex digits. */
  readonly traceId: string;
  /** This process's span: 16 hex digits. */
  readonly spanId: string;
  /** W3C trace flags: 2 hex digits ("01" sampled). */
  readonly flags: string;
  /** The gateway's request id, also the quota charge id. */
  readonly requestId: string;
}

const storage = new AsyncLocalStorage<TraceContext>();
const traceparentPattern = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const requestIdPattern = /^[\w.:-]{1,128}$/;

/** The trace context of the code running now, if any. */
export function currentTrace(): TraceContext | undefined {
  return storage.getStore();
}

/** Runs `fn` with `trace` as the current trace context. */
export function runWithTrace<T>(trace: TraceContext, fn: () => T): T {
  return storage.run(trace, fn);
}

const newSpanId = () => randomBytes(8).toString("hex");

/**
 * Continues the caller's W3C `traceparent` (a new span under its trace) or,
 * when it is absent or malformed, starts a new trace.
 */
export function continueTrace(
  traceparent: string | null | undefined,
  requestId: string | null | undefined,
): TraceContext {
  const match = traceparent ? traceparentPattern.exec(traceparent.trim()) : null;
  const traceId = match?.[1];
  const valid = traceId !== undefined && !/^0+$/.test(traceId) && !/^0+$/.test(match?.[2] ?? "");
  return {
    traceId: valid ? traceId : randomBytes(16).toString("hex"),
    spanId: newSpanId(),
    flags: valid ? (match?.[3] ?? "01") : "01",
    requestId: requestId && requestIdPattern.test(requestId) ? requestId : randomUUID(),
  };
}

/** The `traceparent` header value naming `trace`'s span as the parent. */
export function formatTraceparent(trace: TraceContext): string {
  return `00-${trace.traceId}-${trace.spanId}-${trace.flags}`;
}

/** The fields every log line about a request carries. */
export function traceLogFields(trace: TraceContext | undefined): Record<string, string> {
  return trace === undefined ? {} : { trace_id: trace.traceId, request_id: trace.requestId };
}

/**
 * Client side: sends the current trace context as gRPC metadata
 * (`traceparent`, `x-request-id`) on every call.
 */
export function createTraceClientInterceptor(): Interceptor {
  return (next) => (req) => {
    const trace = storage.getStore();
    if (trace !== undefined) {
      req.header.set("traceparent", formatTraceparent(trace));
      req.header.set("x-request-id", trace.requestId);
    }
    return next(req);
  };
}

/**
 * Server side: reads `traceparent` and `x-request-id` from the call's
 * metadata and runs the handler in that trace context, so every log line the
 * handler writes carries them.
 */
export function createTraceServerInterceptor(): Interceptor {
  return (next) => (req) => {
    const trace = continueTrace(req.header.get("traceparent"), req.header.get("x-request-id"));
    return storage.run(trace, () => next(req));
  };
}
