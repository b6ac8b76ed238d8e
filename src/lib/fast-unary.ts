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
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
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

function sendError(res: http.ServerResponse, err: unknown): void {
  const error = ConnectError.from(err);
  const body = errorToJsonBytes(error, {});
  res.writeHead(codeToHttpStatus(error.code), {
    "content-type": jsonType,
    "content-length": body.byteLength,
  });
  res.end(body);
}

function decode(fast: FastMethod, body: Uint8Array) {
  try {
    return codecFor(fast.method.input).decode(body);
  } catch (err) {
    throw new ConnectError(
      `parse binary: ${err instanceof Error ? err.message : String(err)}`,
      Code.InvalidArgument,
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
          const ctx = (req as UnaryRequest & { ctx: HandlerContext }).ctx;
          const out = await fast.impl(req.message, ctx);
          return {
            stream: false,
            service: fast.service,
            method: fast.method,
            get header() {
              return ctx.responseHeader;
            },
            get trailer() {
              return ctx.responseTrailer;
            },
            message: isMessage(out, fast.method.output)
              ? out
              : create(fast.method.output, out as never),
          };
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
    let controller: AbortController | undefined;
    let aborted: ConnectError | undefined;
    let fail: (reason: ConnectError) => void = () => {};
    const signal = () => {
      if (controller === undefined) {
        controller = new AbortController();
        if (aborted !== undefined) controller.abort(aborted);
      }
      return controller.signal;
    };
    const abort = (reason: ConnectError) => {
      if (aborted !== undefined) return;
      aborted = reason;
      controller?.abort(reason);
      fail(reason);
    };
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(
            () => abort(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
            timeoutMs,
          );
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    const url = fast.path;
    // Headers and context values are made only if something uses them.
    let requestHeader: Headers | undefined;
    const requestHeaderOf = () => {
      requestHeader ??= header();
      return requestHeader;
    };
    let responseHeader: Headers | undefined;
    let responseTrailer: Headers | undefined;
    let values: ContextValues | undefined;
    const ctx: HandlerContext = {
      service: fast.service,
      method: fast.method,
      protocolName: "connect",
      requestMethod: "POST",
      url,
      get signal() {
        return signal();
      },
      timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
      get requestHeader() {
        return requestHeaderOf();
      },
      get responseHeader() {
        responseHeader ??= new Headers();
        return responseHeader;
      },
      get responseTrailer() {
        responseTrailer ??= new Headers();
        return responseTrailer;
      },
      get values() {
        values ??= createContextValues().set(traceKey, trace);
        return values;
      },
    };
    const done = new Promise<Answer>((resolve, reject) => {
      fail = reject;
      const unaryRequest = {
        stream: false as const,
        service: fast.service,
        method: fast.method,
        requestMethod: "POST",
        url,
        get signal() {
          return signal();
        },
        get header() {
          return requestHeaderOf();
        },
        get contextValues() {
          return ctx.values;
        },
        message: read(fast, request),
        ctx,
      };
      chainOf(fast)(unaryRequest).then(
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

/** The caller's trace headers, as the handler sees them. */
function traceHeaders(get: (name: string) => string | undefined): Headers {
  const header = new Headers();
  for (const name of ["traceparent", "x-request-id"]) {
    const value = get(name);
    if (value !== undefined) header.set(name, value);
  }
  return header;
}

/** A `connect-timeout-ms` value as a deadline, undefined when absent or not positive. */
function parseTimeoutMs(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = Number(value);
  return Number.isFinite(ms) && ms > 0 ? ms : undefined;
}

/**
 * The lean path of an RPC server: Connect unary calls in binary over
 * HTTP/1.1 (`POST /pkg.Service/Method`, `content-type: application/proto`),
 * answered without the generic router's stream plumbing. It speaks the same
 * Connect protocol as the router (status codes, error JSON, timeouts) and runs
 * the same interceptors; every other request — gRPC, gRPC-Web, Connect JSON,
 * HTTP/2 — is left to the router.
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
      res.writeHead(200, { "content-type": protoType, "content-length": bytes.byteLength });
      res.end(bytes);
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
    const fast = invoker.lookup(req.url ?? "");
    if (fast === undefined) return false;
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > options.readMaxBytes) {
        req.removeAllListeners("data");
        req.resume();
        sendError(
          res,
          new ConnectError(
            `message larger than ${options.readMaxBytes} bytes`,
            Code.ResourceExhausted,
          ),
        );
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
