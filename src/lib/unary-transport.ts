import {
  create,
  type DescMessage,
  type DescMethodUnary,
  type DescService,
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
      const response = await call(
        new OutgoingRequest(
          method as DescMethodUnary,
          `${prefix}/${method.parent.typeName}/${method.name}`,
          signal ?? noSignal,
          requestHeader,
          isMessage(input, method.input) ? input : create(method.input, input),
        ),
      );
      return response as unknown as UnaryResponse<I, O>;
    },
    stream: (...args) => options.streamTransport.stream(...args),
  };
}

/*
 * Requests and responses are instances of classes, not object literals with
 * getters: such a literal's getters are new closures each time, which gives
 * every object a hidden class of its own, made in V8's old generation, that
 * keeps the call's young objects alive until a full collection (see
 * fast-unary.ts). The getters here make what is rarely read on first read.
 */

/** An outgoing unary request; its context values are made only if read. */
class OutgoingRequest implements UnaryRequest {
  readonly stream = false;
  readonly requestMethod = "POST";
  readonly service: DescService;
  private values: ContextValues | undefined = undefined;
  constructor(
    readonly method: DescMethodUnary,
    readonly url: string,
    readonly signal: AbortSignal,
    readonly header: Headers,
    readonly message: UnaryRequest["message"],
  ) {
    this.service = method.parent;
  }
  get contextValues(): ContextValues {
    this.values ??= createContextValues();
    return this.values;
  }
}

class Answered implements UnaryResponse {
  readonly stream = false;
  readonly service: DescService;
  readonly method: DescMethodUnary;
  private headerMade: Headers | undefined = undefined;
  private trailerMade: Headers | undefined = undefined;
  constructor(
    req: UnaryRequest,
    readonly message: UnaryResponse["message"],
  ) {
    this.service = req.service;
    this.method = req.method;
  }
  get header(): Headers {
    this.headerMade ??= new Headers();
    return this.headerMade;
  }
  get trailer(): Headers {
    this.trailerMade ??= new Headers();
    return this.trailerMade;
  }
}

/** A call's response; its (always empty) headers and trailers are made only if read. */
export const answered = (req: UnaryRequest, message: UnaryResponse["message"]): UnaryResponse =>
  new Answered(req, message);
