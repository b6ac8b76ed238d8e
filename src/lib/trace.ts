import { AsyncLocalStorage } from "node:async_hooks";
import { randomFillSync, randomUUID } from "node:crypto";
import { type ContextValues, createContextKey, type Interceptor } from "@connectrpc/connect";

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

/**
 * The trace of the call an RPC handler serves, in the call's context values
 * (`traceOf(ctx)`). The services carry it there rather than in
 * AsyncLocalStorage: on Node 20 that storage makes every promise pay for
 * async hooks, which cost the services about a fifth of their CPU in
 * `make bench` (and much garbage-collection work).
 */
export const traceKey = createContextKey<TraceContext | undefined>(undefined, {
  description: "the call's trace context",
});

/** The trace of the call whose context values these are, if any. */
export function traceOf(ctx: { readonly values: ContextValues }): TraceContext | undefined {
  return ctx.values.get(traceKey);
}

/** The trace context of the code running now, if any (the gateway's requests). */
export function currentTrace(): TraceContext | undefined {
  return storage.getStore();
}

/** Runs `fn` outside any trace context (for work done for many requests at once). */
export function outsideTrace<T>(fn: () => T): T {
  return storage.exit(fn);
}

/** Runs `fn` with `trace` as the current trace context. */
export function runWithTrace<T>(trace: TraceContext, fn: () => T): T {
  return storage.run(trace, fn);
}

// Ids are cut from a pool of random bytes refilled 4 KiB at a time: one
// system call per 256 spans instead of one per span.
const pool = Buffer.allocUnsafe(4096);
let poolOffset = pool.length;

/** `bytes` random bytes as lowercase hex. */
function randomHex(bytes: number): string {
  if (poolOffset + bytes > pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const hex = pool.toString("hex", poolOffset, poolOffset + bytes);
  poolOffset += bytes;
  return hex;
}

const newSpanId = () => randomHex(8);

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
    traceId: valid ? traceId : randomHex(16),
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
 * metadata and puts that trace context in the call's context values, where
 * the handler finds it with `traceOf(ctx)` for its log lines.
 */
export function createTraceServerInterceptor(): Interceptor {
  return (next) => (req) => {
    // The lean paths set the trace already (from the same headers).
    if (req.contextValues.get(traceKey) === undefined) {
      req.contextValues.set(
        traceKey,
        continueTrace(req.header.get("traceparent"), req.header.get("x-request-id")),
      );
    }
    return next(req);
  };
}
