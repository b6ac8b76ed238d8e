import {
  create,
  type DescMessage,
  type DescMethodUnary,
  isMessage,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import {
  type ContextValues,
  createContextValues,
  type Interceptor,
  type Transport,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";

/** Sends one unary request: what a lean transport implements. */
export type SendUnary = (req: UnaryRequest) => Promise<UnaryResponse>;

/** Never aborted: the signal of calls made without one (it must get no listeners). */
export const noSignal = new AbortController().signal;

export interface UnaryTransportOptions {
  /** Called for each unary call, after the interceptors. */
  readonly send: SendUnary;
  readonly interceptors?: readonly Interceptor[];
  /** The deadline of a call that names none; it travels in `connect-timeout-ms`. */
  readonly defaultTimeoutMs: number;
  /** Put before `/pkg.Service/Method` in the request's URL. */
  readonly pathPrefix?: string;
  /** Streaming calls go here. */
  readonly streamTransport: Transport;
}

/**
 * A Connect `Transport` around a lean `send`: the generated clients and the
 * interceptors see ordinary unary requests (deadline in the
 * `connect-timeout-ms` header, as on the Connect wire); streams go to
 * `streamTransport`. Context values are made only if something reads them.
 */
export function createUnaryTransport(options: UnaryTransportOptions): Transport {
  const prefix = options.pathPrefix ?? "";
  const call = (options.interceptors ?? []).reduceRight<SendUnary>(
    (next, interceptor) => interceptor(next as never) as never,
    options.send,
  );
  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: MessageInitShape<I>,
    ): Promise<UnaryResponse<I, O>> {
      const requestHeader = new Headers(header);
      requestHeader.set("connect-timeout-ms", String(timeoutMs ?? options.defaultTimeoutMs));
      let contextValues: ContextValues | undefined;
      const response = await call({
        stream: false,
        service: method.parent,
        method: method as DescMethodUnary,
        requestMethod: "POST",
        url: `${prefix}/${method.parent.typeName}/${method.name}`,
        signal: signal ?? noSignal,
        header: requestHeader,
        get contextValues() {
          contextValues ??= createContextValues();
          return contextValues;
        },
        message: isMessage(input, method.input) ? input : create(method.input, input),
      });
      return response as unknown as UnaryResponse<I, O>;
    },
    stream: (...args) => options.streamTransport.stream(...args),
  };
}

/** A call's response; its (always empty) headers and trailers are made only if read. */
export function answered(req: UnaryRequest, message: UnaryResponse["message"]): UnaryResponse {
  let header: Headers | undefined;
  let trailer: Headers | undefined;
  return {
    stream: false,
    service: req.service,
    method: req.method,
    get header() {
      header ??= new Headers();
      return header;
    },
    get trailer() {
      trailer ??= new Headers();
      return trailer;
    },
    message,
  };
}
