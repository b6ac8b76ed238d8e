import { randomFillSync } from "node:crypto";
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
  /** The caller's W3C `tracestate`, passed on unchanged; none when absent or malformed. */
  readonly tracestate?: string | undefined;
}

/**
 * A `traceparent`: version, trace id, parent id, flags. A version after 00
 * may add fields after a dash (W3C Trace Context, "Versioning of
 * traceparent"): they are read as far as version 00 goes. Version ff is
 * invalid, and version 00 has nothing after its flags.
 */
const traceparentPattern = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const readsAs00 = (match: RegExpExecArray) =>
  match[1] !== "ff" && (match[1] !== "00" || match[5] === undefined);
const requestIdPattern = /^[\w.:-]{1,128}$/;

/**
 * A `tracestate` list-member, `key=value` (W3C Trace Context Level 1,
 * "tracestate Header Field Values"): a simple key or a multi-tenant
 * `tenant@system` one, and a value of printable ASCII without `,` or `=`
 * that does not end in a space.
 */
const tracestateMember =
  /^(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/;
/** The most list-members a `tracestate` may have. */
const maxTracestateMembers = 32;
/** HTTP's optional white space (spaces and tabs) around a value or a list-member. */
const ows = /^[ \t]+|[ \t]+$/g;

/**
 * The caller's `tracestate` to pass on, unchanged but for the white space
 * around it; none when it is malformed, has a key twice or more than 32
 * members, which the spec lets a vendor discard whole. Several `tracestate`
 * headers come joined by commas, as one list.
 */
function readTracestate(value: string | null | undefined): string | undefined {
  if (!value) return undefined;
  const keys = new Set<string>();
  for (const part of value.split(",")) {
    const member = part.replace(ows, "");
    if (member === "") continue;
    if (!tracestateMember.test(member)) return undefined;
    const key = member.slice(0, member.indexOf("="));
    if (keys.has(key) || keys.size === maxTracestateMembers) return undefined;
    keys.add(key);
  }
  return keys.size === 0 ? undefined : value.replace(ows, "");
}

/**
 * The trace of the call an RPC handler serves, in the call's context values
 * (`traceOf(ctx)`). Traces are passed along explicitly — in context values,
 * in the gateway's chat deps, as call options — never kept in
 * AsyncLocalStorage: on Node 20 that storage makes every promise pay for
 * async hooks, some 12–18 % of the gateway's CPU per chat under `make bench`.
 */
export const traceKey = createContextKey<TraceContext | undefined>(undefined, {
  description: "the call's trace context",
});

/** The trace of the call whose context values these are, if any. */
export function traceOf(ctx: { readonly values: ContextValues }): TraceContext | undefined {
  return ctx.values.get(traceKey);
}

// Ids are cut from a pool of random bytes refilled 4 KiB at a time: one
// system call per 256 spans instead of one per span.
const pool = Buffer.allocUnsafe(4096);
let poolOffset = pool.length;

/** Where the next `bytes` random bytes start in the pool, refilled when short. */
function takeRandom(bytes: number): number {
  if (poolOffset + bytes > pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const at = poolOffset;
  poolOffset += bytes;
  return at;
}

/** `bytes` random bytes as lowercase hex. */
function randomHex(bytes: number): string {
  const at = takeRandom(bytes);
  return pool.toString("hex", at, at + bytes);
}

const newSpanId = () => randomHex(8);

// The last id's millisecond and its 12-bit counter (RFC 9562 section 6.2, method 1).
let lastMs = 0;
let counter = 0;
const uuid = Buffer.allocUnsafe(16);

/**
 * A new request id: a UUIDv7 (RFC 9562), its first 48 bits the Unix time in
 * milliseconds. Ids of one process sort in the order they were made: within
 * a millisecond a 12-bit counter, started at a random value up to 2047,
 * orders them (when it runs out, the time moves one millisecond ahead), and
 * a clock that goes back is not followed. Being time-ordered, they go in at
 * the end of the history's unique index on request_id, not at a random page
 * of it as UUIDv4s do, which makes that index much cheaper to insert into.
 */
export function newRequestId(now: number = Date.now()): string {
  const r = takeRandom(10);
  if (now > lastMs) {
    lastMs = now;
    counter = pool.readUInt16BE(r) & 0x7ff;
  } else if (++counter > 0xfff) {
    lastMs += 1;
    counter = 0;
  }
  uuid.writeUIntBE(lastMs, 0, 6);
  uuid.writeUInt16BE(0x7000 | counter, 6);
  uuid[8] = 0x80 | ((pool[r + 2] as number) & 0x3f);
  pool.copy(uuid, 9, r + 3, r + 10);
  const hex = uuid.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Continues the caller's W3C `traceparent` (a new span under its trace),
 * with its `tracestate`, or, when it is absent or malformed, starts a new
 * trace (and, as the spec asks, reads no `tracestate`).
 */
export function continueTrace(
  traceparent: string | null | undefined,
  requestId: string | null | undefined,
  tracestate?: string | null | undefined,
): TraceContext {
  const found = traceparent ? traceparentPattern.exec(traceparent.trim()) : null;
  const match = found !== null && readsAs00(found) ? found : null;
  const traceId = match?.[2];
  const valid = traceId !== undefined && !/^0+$/.test(traceId) && !/^0+$/.test(match?.[3] ?? "");
  return {
    traceId: valid ? traceId : randomHex(16),
    spanId: newSpanId(),
    flags: valid ? (match?.[4] ?? "01") : "01",
    requestId: requestId && requestIdPattern.test(requestId) ? requestId : newRequestId(),
    tracestate: valid ? readTracestate(tracestate) : undefined,
  };
}

/** The `traceparent` header value naming `trace`'s span as the parent. */
export function formatTraceparent(trace: TraceContext): string {
  return `00-${trace.traceId}-${trace.spanId}-${trace.flags}`;
}

/**
 * The options of a call from the gateway: always these two fields, in this
 * order, so that every call's options object has one hidden class. Under
 * `make bench`, the model call's options alone carrying `contextValues` (its
 * Cancellation) beside the other calls' `{ headers }` cost the gateway
 * ~20 µs of CPU a chat and ~35 MB of peak RSS; with one class for all, none
 * measurable (docs/performance.md).
 */
class TraceCallOptions {
  constructor(
    readonly headers: Record<string, string> | undefined,
    readonly contextValues: ContextValues | undefined,
  ) {}
}

/**
 * Call options that send `trace` to the service called, as the
 * `traceparent`, `tracestate` (when the caller sent one) and `x-request-id`
 * headers (none without a trace), with `contextValues` (a unary chat's
 * Cancellation) when given.
 */
export function traceCallOptions(
  trace: TraceContext | undefined,
  contextValues?: ContextValues,
): { headers?: Record<string, string>; contextValues?: ContextValues } {
  let headers: Record<string, string> | undefined;
  if (trace !== undefined) {
    const traceparent = formatTraceparent(trace);
    headers =
      trace.tracestate === undefined
        ? { traceparent, "x-request-id": trace.requestId }
        : { traceparent, tracestate: trace.tracestate, "x-request-id": trace.requestId };
  }
  return new TraceCallOptions(headers, contextValues) as {
    headers?: Record<string, string>;
    contextValues?: ContextValues;
  };
}

/** The fields every log line about a request carries. */
export function traceLogFields(trace: TraceContext | undefined): Record<string, string> {
  return trace === undefined ? {} : { trace_id: trace.traceId, request_id: trace.requestId };
}

/**
 * Server side, for calls through the Connect router: unless the server put
 * the request's trace in the call's context values already (the HTTP
 * server does), reads `traceparent` and `x-request-id` from the call's
 * metadata and puts that trace context there, where the handler finds it
 * with `traceOf(ctx)` for its log lines. (The lean paths hand the invoker
 * their trace themselves.)
 */
export function createTraceServerInterceptor(): Interceptor {
  return (next) => (req) => {
    if (req.contextValues.get(traceKey) === undefined) {
      req.contextValues.set(
        traceKey,
        continueTrace(
          req.header.get("traceparent"),
          req.header.get("x-request-id"),
          req.header.get("tracestate"),
        ),
      );
    }
    return next(req);
  };
}
