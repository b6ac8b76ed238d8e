import type http from "node:http";
import {
  create,
  type DescMethodUnary,
  type DescService,
  fromBinary,
  isMessage,
  toBinary,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createContextValues,
  type HandlerContext,
  type Interceptor,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import type { Logger } from "./logger.js";
import { continueTrace, runWithTrace } from "./trace.js";

type AnyUnaryImpl = (request: unknown, context: HandlerContext) => unknown;

/** A unary method implementation the lean path can serve. */
export interface FastMethod {
  readonly service: DescService;
  readonly method: DescMethodUnary;
  readonly impl: AnyUnaryImpl;
}

/** A request handler that answers what it can and returns false for the rest. */
export type FastPath = (req: http.IncomingMessage, res: http.ServerResponse) => boolean;

export interface FastUnaryOptions {
  /** The same interceptors as the Connect router's. */
  readonly interceptors: readonly Interceptor[];
  readonly readMaxBytes: number;
  /** Gets one line per call, as the router's requests do. */
  readonly logger: Logger;
}

/**
 * Records the implementations registered on a Connect router, so that the
 * unary ones can also be served by `createFastUnaryPath`.
 */
export function recordServices(router: ConnectRouter, into: FastMethod[]): ConnectRouter {
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
            impl: (fn as AnyUnaryImpl).bind(impl),
          });
        }
      }
      router.service(service, impl, options);
      return this;
    },
    rpc(method, impl, options) {
      router.rpc(method, impl, options);
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

/**
 * The lean path of an RPC server: Connect unary calls in binary over
 * HTTP/1.1 (`POST /pkg.Service/Method`, `content-type: application/proto`),
 * answered without the generic router's stream plumbing. It speaks the same
 * Connect protocol as the router (status codes, error JSON, timeouts) and runs
 * the same interceptors; every other request — gRPC, gRPC-Web, Connect JSON,
 * HTTP/2 — is left to the router.
 */
export function createFastUnaryPath(
  methods: readonly FastMethod[],
  options: FastUnaryOptions,
): FastPath {
  // Methods are recorded while the router is built, after this is created.
  let byPath: Map<string, FastMethod> | undefined;
  const lookup = (path: string) => {
    byPath ??= new Map(methods.map((m) => [`/${m.service.typeName}/${m.method.name}`, m]));
    return byPath.get(path);
  };

  const call = (fast: FastMethod, ctx: HandlerContext) =>
    options.interceptors.reduceRight<(req: UnaryRequest) => Promise<UnaryResponse>>(
      (next, interceptor) => interceptor(next as never) as never,
      async (req) => {
        const out = await fast.impl(req.message, ctx);
        return {
          stream: false,
          service: fast.service,
          method: fast.method,
          header: ctx.responseHeader,
          trailer: ctx.responseTrailer,
          message: isMessage(out, fast.method.output)
            ? out
            : create(fast.method.output, out as never),
        };
      },
    );

  async function serve(
    fast: FastMethod,
    req: http.IncomingMessage,
    res: http.ServerResponse,
    body: Buffer,
  ) {
    const started = performance.now();
    const abort = new AbortController();
    res.once("close", () => {
      if (!res.writableFinished) abort.abort(new ConnectError("client went away", Code.Canceled));
    });
    const timeoutHeader = req.headers["connect-timeout-ms"];
    const timeoutMs = typeof timeoutHeader === "string" ? Number(timeoutHeader) : undefined;
    let timer: NodeJS.Timeout | undefined;
    if (timeoutMs !== undefined && Number.isFinite(timeoutMs) && timeoutMs > 0) {
      timer = setTimeout(
        () => abort.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
        timeoutMs,
      );
    }
    const header = new Headers();
    for (const name of ["traceparent", "x-request-id"]) {
      const value = req.headers[name];
      if (typeof value === "string") header.set(name, value);
    }
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    const ctx: HandlerContext = {
      service: fast.service,
      method: fast.method,
      protocolName: "connect",
      requestMethod: "POST",
      url: req.url ?? "",
      signal: abort.signal,
      timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
      requestHeader: header,
      responseHeader: new Headers(),
      responseTrailer: new Headers(),
      values: createContextValues(),
    };
    try {
      const message = fromBinary(fast.method.input, body);
      const invoke = call(fast, ctx);
      const pending = invoke({
        stream: false,
        service: fast.service,
        method: fast.method,
        requestMethod: "POST",
        url: ctx.url,
        signal: abort.signal,
        header,
        contextValues: ctx.values,
        message,
      });
      const response = await (timer === undefined
        ? pending
        : Promise.race([
            pending,
            new Promise<never>((_, reject) =>
              abort.signal.addEventListener("abort", () => reject(abort.signal.reason), {
                once: true,
              }),
            ),
          ]));
      const bytes = toBinary(fast.method.output, response.message);
      res.writeHead(200, { "content-type": protoType, "content-length": bytes.byteLength });
      res.end(bytes);
    } catch (err) {
      if (!res.headersSent && !res.destroyed) sendError(res, err);
    } finally {
      if (timer !== undefined) clearTimeout(timer);
      options.logger.info(
        {
          method: "POST",
          route: req.url,
          status: res.statusCode,
          ms: Math.round((performance.now() - started) * 10) / 10,
        },
        "request",
      );
    }
  }

  return (req, res) => {
    if (req.method !== "POST" || req.headers["content-type"] !== protoType) return false;
    const fast = lookup(req.url ?? "");
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
      runWithTrace(trace, () => void serve(fast, req, res, body));
    });
    return true;
  };
}
