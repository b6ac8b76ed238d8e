import {
  create,
  type DescMessage,
  type DescMethodUnary,
  type DescService,
  isMessage,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextKey,
  type ContextValues,
  createContextKey,
  createContextValues,
  type Interceptor,
  type Transport,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";

/** Sends one unary request: what a lean transport implements. */
export type SendUnary = (req: UnaryRequest) => Promise<UnaryResponse>;

/** Never aborted: the signal of calls made without one (it must get no listeners). */
const noSignal = new AbortController().signal;

/**
 * Cancels unary calls without an `AbortSignal`: on Node 20 adding and
 * removing a listener of a new signal takes microseconds (a signal per unary
 * chat cost the gateway some 35 µs of CPU a chat under `make bench`, and
 * 35 MB more memory at peak). It is itself the call's context values (one
 * object a call, not a `Cancellation` and context values of closures): given
 * as `contextValues` (`traceCallOptions` gives it so), the lean transports (and
 * `withCancellation` around any other) end the call as Canceled on
 * `cancel()`, and stop waiting for its answer.
 */
export class Cancellation implements ContextValues {
  private done = false;
  private listeners: Array<() => void> | undefined = undefined;
  /** Any other context values set on it. */
  private others: ContextValues | undefined = undefined;

  get cancelled(): boolean {
    return this.done;
  }

  cancel(): void {
    if (this.done) return;
    this.done = true;
    const listeners = this.listeners;
    this.listeners = undefined;
    for (const listener of listeners ?? []) listener();
  }

  /** Calls `listener` on cancel (now, if cancelled already); returns what stops that. */
  listen(listener: () => void): () => void {
    if (this.done) {
      listener();
      return () => undefined;
    }
    this.listeners ??= [];
    this.listeners.push(listener);
    return () => {
      const at = this.listeners?.indexOf(listener) ?? -1;
      if (at >= 0) this.listeners?.splice(at, 1);
    };
  }

  get<T>(key: ContextKey<T>): T {
    if ((key as ContextKey<unknown>) === cancellationKey) return this as unknown as T;
    return this.others === undefined ? key.defaultValue : this.others.get(key);
  }

  set<T>(key: ContextKey<T>, value: T): this {
    if ((key as ContextKey<unknown>) !== cancellationKey) {
      this.others ??= createContextValues();
      this.others.set(key, value);
    }
    return this;
  }

  delete(key: ContextKey<unknown>): this {
    this.others?.delete(key);
    return this;
  }
}

export const cancellationKey = createContextKey<Cancellation | undefined>(undefined, {
  description: "the call's Cancellation",
});

/**
 * Calls `onCancel` when `req` is cancelled, by its signal or by its
 * `Cancellation` (at once if it is already); returns what stops listening,
 * or undefined when there is nothing to listen to (the shared never-aborted
 * signal gets no listeners).
 */
export function whenCancelled(
  req: UnaryRequest,
  onCancel: (err: ConnectError) => void,
): (() => void) | undefined {
  const early = cancelledBefore(req);
  if (early !== undefined) {
    onCancel(early);
    return undefined;
  }
  const { signal } = req;
  const cancellation = cancellationOf(req);
  let stopSignal: (() => void) | undefined;
  if (signal !== noSignal) {
    const onAbort = () => onCancel(ConnectError.from(signal.reason, Code.Canceled));
    signal.addEventListener("abort", onAbort, { once: true });
    stopSignal = () => signal.removeEventListener("abort", onAbort);
  }
  if (cancellation === undefined) return stopSignal;
  const stopCancellation = cancellation.listen(() => onCancel(cancelledError()));
  return stopSignal === undefined
    ? stopCancellation
    : () => {
        stopSignal();
        stopCancellation();
      };
}

/**
 * `transport`, its unary calls also ended by a `Cancellation` in their
 * context values, through an `AbortSignal` made for such calls only: for a
 * transport that knows only signals (Connect's own).
 */
export function withCancellation(transport: Transport): Transport {
  return {
    unary(method, signal, timeoutMs, header, input, contextValues) {
      const cancellation = contextValues?.get(cancellationKey);
      if (cancellation === undefined) {
        return transport.unary(method, signal, timeoutMs, header, input, contextValues);
      }
      const cancelled = new AbortController();
      const stop = cancellation.listen(() => cancelled.abort(cancelledError()));
      const either =
        signal === undefined ? cancelled.signal : AbortSignal.any([signal, cancelled.signal]);
      const call = transport.unary(method, either, timeoutMs, header, input, contextValues);
      call.then(stop, stop);
      return call;
    },
    stream: (...args) => transport.stream(...args),
  };
}

/** Why `req` is cancelled already, if it is: a call cancelled before it began is not sent. */
export function cancelledBefore(req: UnaryRequest): ConnectError | undefined {
  if (req.signal.aborted) return ConnectError.from(req.signal.reason, Code.Canceled);
  if (cancellationOf(req)?.cancelled === true) return cancelledError();
  return undefined;
}

function cancellationOf(req: UnaryRequest): Cancellation | undefined {
  return req instanceof OutgoingRequest ? req.cancellation : req.contextValues.get(cancellationKey);
}

const cancelledError = () => new ConnectError("the call was cancelled", Code.Canceled);

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
      header: HeaderInit | undefined,
      input: MessageInitShape<I>,
      contextValues: ContextValues | undefined,
    ): Promise<UnaryResponse<I, O>> {
      const response = await call(
        new OutgoingRequest(
          method as DescMethodUnary,
          `${prefix}/${method.parent.typeName}/${method.name}`,
          signal ?? noSignal,
          header,
          timeoutMs ?? options.defaultTimeoutMs,
          isMessage(input, method.input) ? input : create(method.input, input),
          contextValues,
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

type HeaderInit = ConstructorParameters<typeof Headers>[0];

/**
 * An outgoing unary request; its context values, and its `Headers`, are made
 * only if read. Making a `Headers` (undici's, with its WebIDL checks) took
 * some 7 % of the gateway's CPU under `make bench`: a transport asks
 * `requestHeaders` instead, which reads the call's plain headers directly.
 */
class OutgoingRequest implements UnaryRequest {
  readonly stream = false;
  readonly requestMethod = "POST";
  readonly service: DescService;
  private headerMade: Headers | undefined = undefined;
  constructor(
    readonly method: DescMethodUnary,
    readonly url: string,
    readonly signal: AbortSignal,
    readonly headerInit: HeaderInit | undefined,
    readonly timeoutMs: number,
    readonly message: UnaryRequest["message"],
    private values: ContextValues | undefined,
  ) {
    this.service = method.parent;
  }
  /** The call's Cancellation, read without making context values. */
  get cancellation(): Cancellation | undefined {
    return this.values?.get(cancellationKey);
  }
  get contextValues(): ContextValues {
    this.values ??= createContextValues();
    return this.values;
  }
  /** The request's headers, the deadline in `connect-timeout-ms` as on the Connect wire. */
  get header(): Headers {
    if (this.headerMade === undefined) {
      this.headerMade = new Headers(this.headerInit);
      this.headerMade.set("connect-timeout-ms", String(this.timeoutMs));
    }
    return this.headerMade;
  }
  /** Whether `header` was read (an interceptor may have changed it). */
  get headerRead(): boolean {
    return this.headerMade !== undefined;
  }
}

/** What a transport sends of a request's metadata. */
export interface RequestHeaders {
  /** The deadline: `connect-timeout-ms`, else the transport's default. */
  readonly timeoutMs: number;
  /** The other headers, as lowercase name / value pairs. */
  readonly pairs: string[];
}

// A header that `Headers` would keep as it is: a lowercase token for a name,
// printable ASCII for a value, without surrounding spaces. (Anything else
// goes through `Headers`, which normalises or refuses it.)
const plainName = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
const plainValue = /^(?:[!-~](?:[ -~]*[!-~])?)?$/;

/**
 * The deadline and headers of `req`. For a request of `createUnaryTransport`
 * whose `header` nobody read, they come from the call options as given
 * (when every name and value is one `Headers` would keep as it is), without
 * making a `Headers`; otherwise from `req.header`.
 */
export function requestHeaders(req: UnaryRequest, defaultTimeoutMs: number): RequestHeaders {
  if (req instanceof OutgoingRequest && !req.headerRead) {
    const pairs = plainPairs(req.headerInit);
    if (pairs !== undefined) return { timeoutMs: req.timeoutMs, pairs };
  }
  const pairs: string[] = [];
  req.header.forEach((value, key) => {
    if (key !== "connect-timeout-ms") pairs.push(key, value);
  });
  return { timeoutMs: Number(req.header.get("connect-timeout-ms") ?? defaultTimeoutMs), pairs };
}

/**
 * `init` as pairs, or undefined if `Headers` might change or refuse any of
 * it. Only a plain object is read: a `Headers` or an array of pairs is left
 * to `Headers`. Checked by prototype, not with `instanceof Headers`: the
 * first read of the global `Headers` loads undici, ~2 MB of heap in a
 * process that otherwise never makes one.
 */
function plainPairs(init: HeaderInit | undefined): string[] | undefined {
  const pairs: string[] = [];
  if (init === undefined) return pairs;
  const proto: unknown = Object.getPrototypeOf(init);
  if (proto !== Object.prototype && proto !== null) return undefined;
  for (const name in init) {
    if (!Object.hasOwn(init, name)) continue;
    const value = (init as Record<string, unknown>)[name];
    if (
      typeof value !== "string" ||
      name === "connect-timeout-ms" ||
      !plainName.test(name) ||
      !plainValue.test(value)
    ) {
      return undefined;
    }
    pairs.push(name, value);
  }
  return pairs;
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
