import type http from "node:http";
import {
  create,
  type DescMethodUnary,
  type DescService,
  isMessage,
  type Message,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type ContextValues,
  createContextValues,
  type HandlerContext,
  type Interceptor,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import type { Compression } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import { codecFor } from "./codec.js";
import type { Logger } from "./logger.js";
import { continueTrace, type TraceContext, traceKey, traceLogFields } from "./trace.js";

type AnyUnaryImpl = (request: unknown, context: HandlerContext) => unknown;

/** A unary method implementation the lean path can serve. */
export interface FastMethod {
  readonly service: DescService;
  readonly method: DescMethodUnary;
  readonly impl: AnyUnaryImpl;
  /** `/pkg.Service/Method`. */
  readonly path: string;
}

/** A request handler that answers what it can and returns false for the rest. */
export type FastPath = (req: http.IncomingMessage, res: http.ServerResponse) => boolean;

export interface FastUnaryOptions {
  readonly readMaxBytes: number;
  /** Gets one line per call, as the router's requests do. */
  readonly logger: Logger;
}

/**
 * Records the implementations registered on a Connect router, so that the
 * unary ones can also be served by `createFastUnaryPath`; `replays` gets, for
 * each registration, a function making the same one on another router.
 */
export function recordServices(
  router: ConnectRouter,
  into: FastMethod[],
  replays: ((router: ConnectRouter) => void)[] = [],
): ConnectRouter {
  return {
    get handlers() {
      return router.handlers;
    },
    service(service, impl, options) {
      for (const method of service.methods) {
        const fn = (impl as Record<string, unknown>)[method.localName];
        if (method.methodKind === "unary" && typeof fn === "function") {
          into.push({
            service,
            method: method as DescMethodUnary,
            path: `/${service.typeName}/${method.name}`,
            impl: (fn as AnyUnaryImpl).bind(impl),
          });
        }
      }
      router.service(service, impl, options);
      replays.push((other) => other.service(service, impl, options));
      return this;
    },
    rpc(method, impl, options) {
      router.rpc(method, impl, options);
      replays.push((other) => other.rpc(method, impl, options));
      return this;
    },
  } as ConnectRouter;
}

const jsonType = "application/json";
const protoType = "application/proto";

/**
 * What a handler's failure tells its caller, as the Connect router tells it:
 * a ConnectError as it is, anything else INTERNAL "internal error" (its own
 * message may say what only the server should know).
 */
export function callerErrorOf(err: unknown): ConnectError {
  return err instanceof ConnectError
    ? err
    : new ConnectError("internal error", Code.Internal, undefined, undefined, err);
}

function sendError(res: http.ServerResponse, err: unknown): void {
  const error = callerErrorOf(err);
  const body = errorToJsonBytes(error, {});
  const headers: http.OutgoingHttpHeaders = {};
  // The error's metadata goes in the response's headers, as the router sends it.
  error.metadata.forEach((value, name) => {
    headers[name] = value;
  });
  res.writeHead(codeToHttpStatus(error.code), {
    ...headers,
    "content-type": jsonType,
    "content-length": body.byteLength,
  });
  res.end(body);
}

function decode(fast: FastMethod, body: Uint8Array) {
  try {
    return codecFor(fast.method.input).decode(body);
  } catch (err) {
    // INTERNAL, as the router's binary serialization (and gRPC servers) answer it.
    throw new ConnectError(
      `parse binary: ${err instanceof Error ? err.message : String(err)}`,
      Code.Internal,
    );
  }
}

/** The response message in protobuf binary, as the lean paths answer. */
const toWire = (fast: FastMethod, message: Message) => codecFor(fast.method.output).encode(message);

/** A message handed over as it is, to or from a caller in the same process. */
const asIs = (_fast: FastMethod, message: Message) => message;

/** One unary call being served: its answer (in binary, by default), and a way to end it early. */
export interface ServedCall<Answer = Uint8Array> {
  /** The response message; rejects with the call's error. */
  readonly done: Promise<Answer>;
  /** Ends the call with `reason` (cancelled, timed out); the handler's signal aborts. */
  abort(reason: ConnectError): void;
}

/** Serves unary calls to recorded methods through the server's interceptors. */
export interface UnaryInvoker {
  lookup(path: string): FastMethod | undefined;
  /**
   * Starts a call with the request message in binary; `header` makes the
   * caller's headers (called at most once, only if the handler or an
   * interceptor reads them), `trace` is the trace continued from them (the
   * handler's `traceOf(ctx)`); `timeoutMs` is the caller's deadline, if any.
   */
  start(
    fast: FastMethod,
    body: Uint8Array,
    header: () => Headers,
    trace: TraceContext,
    timeoutMs: number | undefined,
  ): ServedCall;
  /**
   * As `start`, for a caller in the same process: the request and response
   * messages are handed over as they are, not encoded, so neither side may
   * change them afterwards.
   */
  call(
    fast: FastMethod,
    message: Message,
    header: () => Headers,
    trace: TraceContext,
    timeoutMs: number | undefined,
  ): ServedCall<Message>;
}

/**
 * What the lean paths (Connect over HTTP/1.1, lean frames) share: method
 * lookup by path, the interceptor chain, deadlines and cancellation. The
 * handler's AbortSignal and request headers are made only if something reads
 * them.
 */
export function createUnaryInvoker(
  methods: readonly FastMethod[],
  interceptors: readonly Interceptor[],
): UnaryInvoker {
  // Methods are recorded while the router is built, after this is created.
  let byPath: Map<string, FastMethod> | undefined;
  const chains = new Map<FastMethod, (req: UnaryRequest) => Promise<UnaryResponse>>();
  const chainOf = (fast: FastMethod) => {
    let chain = chains.get(fast);
    if (chain === undefined) {
      chain = interceptors.reduceRight<(req: UnaryRequest) => Promise<UnaryResponse>>(
        (next, interceptor) => interceptor(next as never) as never,
        async (req) => {
          const ctx = (req as LeanRequest).ctx;
          const out = await fast.impl(req.message, ctx);
          return new LeanResponse(
            ctx,
            isMessage(out, fast.method.output) ? out : create(fast.method.output, out as never),
          );
        },
      );
      chains.set(fast, chain);
    }
    return chain;
  };

  return {
    lookup(path) {
      byPath ??= new Map(methods.map((m) => [m.path, m]));
      return byPath.get(path);
    },
    start: (fast, body, header, trace, timeoutMs) =>
      serve(fast, body, decode, toWire, header, trace, timeoutMs),
    call: (fast, message, header, trace, timeoutMs) =>
      serve(fast, message, asIs, asIs, header, trace, timeoutMs),
  };

  /**
   * A call of `fast`: `read` makes the request message of `request` (inside
   * the call, so that a bad one fails it), `answer` makes what `done` gives
   * of the response message.
   */
  function serve<Request, Answer>(
    fast: FastMethod,
    request: Request,
    read: (fast: FastMethod, request: Request) => Message,
    answer: (fast: FastMethod, response: Message) => Answer,
    header: () => Headers,
    trace: TraceContext,
    timeoutMs: number | undefined,
  ): ServedCall<Answer> {
    const ctx = new LeanContext(
      fast,
      timeoutMs === undefined ? undefined : Date.now() + timeoutMs,
      header,
      trace,
    );
    let fail: (reason: ConnectError) => void = () => {};
    const abort = (reason: ConnectError) => {
      if (ctx.abort(reason)) fail(reason);
    };
    const timer =
      timeoutMs === undefined || timeoutMs > maxTimerMs
        ? undefined
        : setTimeout(
            () => abort(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
            timeoutMs,
          );
    const done = new Promise<Answer>((resolve, reject) => {
      fail = reject;
      chainOf(fast)(new LeanRequest(ctx, fast, request, read)).then(
        (response) => resolve(answer(fast, response.message)),
        reject,
      );
    });
    if (timer !== undefined) {
      const clear = () => clearTimeout(timer);
      done.then(clear, clear);
    }
    return { done, abort };
  }
}

/*
 * A lean call's context, request and response are instances of classes, not
 * object literals with getters: a literal's getters are new closures each
 * time, so V8 gives every such object a hidden class of its own, made in the
 * old generation and pointing at the call's young objects, which then
 * outlive every scavenge until a full collection. Measured on one llm
 * service under frames load (`--trace-gc-nvp`): 4.3 KB of each call's
 * 12 KB promoted with the literals, 2.9 KB with the classes, and 6 bytes
 * once the llm handler no longer made an AbortSignal per call (see
 * LlmCall in services/llm/backend.ts).
 */

/** A lean call's handler context: signal, headers and context values are made only if read. */
class LeanContext implements HandlerContext {
  readonly protocolName = "connect";
  readonly requestMethod = "POST";
  readonly service: DescService;
  readonly method: DescMethodUnary;
  readonly url: string;
  /** Why the call was ended early, once it is. */
  private aborted: ConnectError | undefined = undefined;
  private controller: AbortController | undefined = undefined;
  private requestHeaderMade: Headers | undefined = undefined;
  private responseHeaderMade: Headers | undefined = undefined;
  private responseTrailerMade: Headers | undefined = undefined;
  private valuesMade: ContextValues | undefined = undefined;

  constructor(
    fast: FastMethod,
    private readonly deadline: number | undefined,
    private readonly makeHeader: () => Headers,
    private readonly trace: TraceContext,
  ) {
    this.service = fast.service;
    this.method = fast.method;
    this.url = fast.path;
  }

  readonly timeoutMs = (): number | undefined =>
    this.deadline === undefined ? undefined : this.deadline - Date.now();

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.aborted !== undefined) this.controller.abort(this.aborted);
    }
    return this.controller.signal;
  }

  /** Ends the call with `reason`: the signal aborts. False if it had already ended. */
  abort(reason: ConnectError): boolean {
    if (this.aborted !== undefined) return false;
    this.aborted = reason;
    this.controller?.abort(reason);
    return true;
  }

  get requestHeader(): Headers {
    this.requestHeaderMade ??= this.makeHeader();
    return this.requestHeaderMade;
  }

  get responseHeader(): Headers {
    this.responseHeaderMade ??= new Headers();
    return this.responseHeaderMade;
  }

  get responseTrailer(): Headers {
    this.responseTrailerMade ??= new Headers();
    return this.responseTrailerMade;
  }

  get values(): ContextValues {
    this.valuesMade ??= createContextValues().set(traceKey, this.trace);
    return this.valuesMade;
  }
}

/**
 * A lean call's request, as the interceptors see it. What is made lazily
 * comes from getters on the prototype, which a copy made by spreading does
 * not carry: an interceptor passes this request on, as ours do.
 */
class LeanRequest<Request = unknown> implements UnaryRequest {
  readonly stream = false;
  readonly requestMethod = "POST";
  readonly service: DescService;
  readonly method: DescMethodUnary;
  readonly url: string;
  private made: Message | undefined = undefined;
  constructor(
    readonly ctx: LeanContext,
    private readonly fast: FastMethod,
    private readonly request: Request,
    private readonly read: (fast: FastMethod, request: Request) => Message,
  ) {
    this.service = ctx.service;
    this.method = ctx.method;
    this.url = ctx.url;
  }
  /**
   * The request message, made on first read: inside the interceptors, so
   * that a request that does not parse fails as a call they see (counted in
   * rpc_server_handled_total as INTERNAL), not before them.
   */
  get message(): Message {
    this.made ??= this.read(this.fast, this.request);
    return this.made;
  }
  get signal(): AbortSignal {
    return this.ctx.signal;
  }
  get header(): Headers {
    return this.ctx.requestHeader;
  }
  get contextValues(): ContextValues {
    return this.ctx.values;
  }
}

/** A lean call's response: its headers and trailers are the handler's. */
class LeanResponse implements UnaryResponse {
  readonly stream = false;
  readonly service: DescService;
  readonly method: DescMethodUnary;
  constructor(
    private readonly ctx: LeanContext,
    readonly message: Message,
  ) {
    this.service = ctx.service;
    this.method = ctx.method;
  }
  get header(): Headers {
    return this.ctx.responseHeader;
  }
  get trailer(): Headers {
    return this.ctx.responseTrailer;
  }
}

/** The caller's trace headers, as the handler sees them. */
function traceHeaders(get: (name: string) => string | undefined): Headers {
  const header = new Headers();
  for (const name of ["traceparent", "x-request-id"]) {
    const value = get(name);
    if (value !== undefined) header.set(name, value);
  }
  return header;
}

/**
 * The longest a Node timer waits (2³¹ − 1 ms, ~24.8 days): a longer one fires
 * at once. A deadline farther away than that is served as no deadline.
 */
const maxTimerMs = 2_147_483_647;

/** A valid `connect-timeout-ms` (the Connect protocol's 1–10 digits), or absent. */
const connectTimeout = /^[0-9]{1,10}$/;

const grpcTimeout = /^([0-9]{1,8})([HMSmun])$/;
const grpcTimeoutUnitMs: Readonly<Record<string, number>> = {
  H: 3_600_000,
  M: 60_000,
  S: 1_000,
  m: 1,
  u: 1e-3,
  n: 1e-6,
};

/**
 * Removes a `grpc-timeout` or `connect-timeout-ms` farther away than a Node
 * timer can wait, before the Connect router reads it: the router's timer
 * would fire at once and fail the call with DEADLINE_EXCEEDED (a grpc-js
 * client with a 30-day deadline, say). Such a call then runs without one.
 */
export function dropFarDeadline(headers: http.IncomingHttpHeaders): void {
  const grpc = headers["grpc-timeout"];
  const match = typeof grpc === "string" ? grpcTimeout.exec(grpc) : null;
  if (match && Number(match[1]) * (grpcTimeoutUnitMs[match[2] as string] as number) > maxTimerMs) {
    delete headers["grpc-timeout"];
  }
  const connect = headers["connect-timeout-ms"];
  if (typeof connect === "string" && connectTimeout.test(connect) && Number(connect) > maxTimerMs) {
    delete headers["connect-timeout-ms"];
  }
}

/**
 * A request body over `readMaxBytes`, in the router's words: its size when
 * the request's content-length told it.
 */
function tooLarge(contentLength: string | undefined, readMaxBytes: number): ConnectError {
  const size =
    contentLength === undefined || !/^[0-9]+$/.test(contentLength) ? "" : ` ${contentLength}`;
  return new ConnectError(
    `message size${size} is larger than configured readMaxBytes ${readMaxBytes}`,
    Code.ResourceExhausted,
  );
}

/** The router's response codings, in its order of preference, and the size it compresses from. */
const responseCodings = [compressionGzip, compressionBrotli];
const compressMinBytes = 1024;

/**
 * The coding the router answers in for an `accept-encoding` (Connect's
 * compression negotiation): the first one named that it has, none if none.
 */
function responseCoding(accept: string | undefined): Compression | undefined {
  if (accept === undefined || accept === "") return undefined;
  for (const name of accept.split(",")) {
    const found = responseCodings.find((c) => c.name === name.trim());
    if (found !== undefined) return found;
  }
  return undefined;
}

/** A `connect-timeout-ms` value (checked, not 0) as a deadline, undefined when absent. */
function parseTimeoutMs(value: string | undefined): number | undefined {
  return value === undefined ? undefined : Number(value);
}

/**
 * The lean path of an RPC server: Connect unary calls in binary over
 * HTTP/1.1 (`POST /pkg.Service/Method`, `content-type: application/proto`),
 * answered without the generic router's stream plumbing. It speaks the same
 * Connect protocol as the router (status codes, error JSON, timeouts, response
 * compression) and runs the same interceptors; every other request — gRPC,
 * gRPC-Web, Connect JSON, HTTP/2 — is left to the router.
 */
export function createFastUnaryPath(invoker: UnaryInvoker, options: FastUnaryOptions): FastPath {
  async function serve(
    fast: FastMethod,
    req: http.IncomingMessage,
    res: http.ServerResponse,
    body: Buffer,
    trace: TraceContext,
  ) {
    const started = performance.now();
    const header = () =>
      traceHeaders((name) => {
        const value = req.headers[name];
        return typeof value === "string" ? value : undefined;
      });
    const timeout = req.headers["connect-timeout-ms"];
    try {
      const call = invoker.start(
        fast,
        body,
        header,
        trace,
        parseTimeoutMs(typeof timeout === "string" ? timeout : undefined),
      );
      res.once("close", () => {
        if (!res.writableFinished) call.abort(new ConnectError("client went away", Code.Canceled));
      });
      const bytes = await call.done;
      const coding =
        bytes.byteLength < compressMinBytes
          ? undefined
          : responseCoding(req.headers["accept-encoding"]);
      if (coding === undefined) {
        res.writeHead(200, { "content-type": protoType, "content-length": bytes.byteLength });
        res.end(bytes);
      } else {
        const compressed = await coding.compress(bytes);
        res.writeHead(200, {
          "content-type": protoType,
          "content-encoding": coding.name,
          "content-length": compressed.byteLength,
        });
        res.end(compressed);
      }
    } catch (err) {
      if (!res.headersSent && !res.destroyed) sendError(res, err);
    } finally {
      if (options.logger.isLevelEnabled("info")) {
        options.logger.info(
          {
            ...traceLogFields(trace),
            method: "POST",
            route: req.url,
            status: res.statusCode,
            ms: Math.round((performance.now() - started) * 10) / 10,
          },
          "request",
        );
      }
    }
  }

  return (req, res) => {
    if (req.method !== "POST" || req.headers["content-type"] !== protoType) return false;
    // A compressed body, or a timeout the protocol does not allow, goes to
    // the router, which decompresses or refuses it as the protocol says; so
    // does a timeout of 0, a deadline already past, which it fails at once.
    const encoding = req.headers["content-encoding"];
    if (encoding !== undefined && encoding !== "identity") return false;
    const timeout = req.headers["connect-timeout-ms"];
    if (
      timeout !== undefined &&
      (typeof timeout !== "string" || !connectTimeout.test(timeout) || Number(timeout) === 0)
    ) {
      return false;
    }
    const fast = invoker.lookup(req.url ?? "");
    if (fast === undefined) return false;
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > options.readMaxBytes) {
        req.removeAllListeners("data");
        req.resume();
        sendError(res, tooLarge(req.headers["content-length"], options.readMaxBytes));
        return;
      }
      chunks.push(chunk);
    });
    req.once("end", () => {
      if (size > options.readMaxBytes) return;
      const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
      const traceparent = req.headers.traceparent;
      const requestId = req.headers["x-request-id"];
      const trace = continueTrace(
        typeof traceparent === "string" ? traceparent : undefined,
        typeof requestId === "string" ? requestId : undefined,
      );
      void serve(fast, req, res, body, trace);
    });
    return true;
  };
}
