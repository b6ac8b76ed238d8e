import type { ServerResponse } from "node:http";

/** Headers to send along, such as those set on the reply before it was taken over. */
export type SseHeaders = Readonly<Record<string, string | number | string[] | undefined>>;

/**
 * One server-sent event. The data is JSON on one `data:` line: JSON.stringify
 * escapes line breaks, so a text can never end the frame early.
 */
export function sseFrame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/**
 * An unnamed event, as OpenAI's streams send them: `data:` only. A string is
 * sent as is (the closing `[DONE]`), anything else as JSON.
 */
export function sseDataFrame(data: unknown): string {
  return `data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`;
}

/** A comment line: readers of event streams (EventSource, the OpenAI SDKs) skip it. */
export const keepAliveFrame = ": keep-alive\n\n";

/** An open `text/event-stream` response. */
export interface SseStream {
  /** Aborts when the client goes away before `end()`. */
  readonly signal: AbortSignal;
  /**
   * Writes one event and sends it at once; resolves when the socket can take
   * more (or the client is gone, when writing is skipped).
   */
  send(event: string, data: unknown): Promise<void>;
  /** Writes one frame as it is (see sseFrame, sseDataFrame), as `send` does. */
  write(frame: string): Promise<void>;
  end(): void;
  /** Cuts the stream off: the connection closes without the stream's end. */
  cutOff(): void;
  /**
   * While nothing was sent (a stream opened with `deferHeaders`), answers
   * with `status` and `body` as JSON instead, without the headers named in
   * `without`; true if it did.
   */
  answerInstead(status: number, body: unknown, without?: readonly string[]): boolean;
}

/**
 * Starts an event stream on a raw response the framework no longer manages:
 * writes the status and headers at once (with `deferHeaders`, with the first
 * frame or keep-alive comment, so that a failure before it can still be
 * answered with its own status), and turns the client going away into an
 * aborted signal (a response closed before it finished).
 */
export function openSseStream(
  res: ServerResponse,
  headers: SseHeaders,
  options: {
    readonly deferHeaders?: boolean;
    /**
     * A write still waiting on the client this long closes the connection
     * (the client reads too slowly, or not at all): it would be held open
     * for as long as the client likes.
     */
    readonly stallLimitMs?: number | undefined;
    /**
     * After this long without a frame (the model thinking before its first
     * piece, or pausing between two), a comment line that every reader of
     * event streams skips, so that a proxy's idle timeout does not cut the
     * stream; the headers go with the first one. 0 or absent: none.
     */
    readonly keepAliveMs?: number | undefined;
  } = {},
): SseStream {
  const gone = new AbortController();
  const keepAliveMs = options.keepAliveMs ?? 0;
  let lastWrite = performance.now();
  let keepAlive: NodeJS.Timeout | undefined;
  const stopKeepAlive = () => {
    clearTimeout(keepAlive);
    keepAlive = undefined;
  };
  const armKeepAlive = (delayMs: number) => {
    keepAlive = setTimeout(keepAliveTick, delayMs);
    keepAlive.unref();
  };
  const keepAliveTick = () => {
    keepAlive = undefined;
    if (res.writableEnded || res.destroyed || gone.signal.aborted) return;
    const idleMs = performance.now() - lastWrite;
    if (idleMs < keepAliveMs) return armKeepAlive(keepAliveMs - idleMs);
    // A client not reading what it was sent needs no more: the stall limit is its.
    if (!res.writableNeedDrain) {
      start();
      res.write(keepAliveFrame);
    }
    lastWrite = performance.now();
    armKeepAlive(keepAliveMs);
  };
  const onClose = () => {
    stopKeepAlive();
    // The default reason, an AbortError, is what RPC clients read as "cancelled".
    if (!res.writableFinished) gone.abort();
  };
  res.once("close", onClose);
  if (res.destroyed) onClose();

  let started = false;
  const start = () => {
    if (started) return;
    started = true;
    res.writeHead(200, {
      ...headers,
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      // Proxies such as nginx buffer responses unless told not to.
      "x-accel-buffering": "no",
    });
    res.flushHeaders();
    // Nagle's algorithm would hold back small frames (a test double socket may lack it).
    res.socket?.setNoDelay?.(true);
  };
  if (options.deferHeaders !== true) start();
  if (keepAliveMs > 0) armKeepAlive(keepAliveMs);

  const write = (frame: string): Promise<void> => {
    if (gone.signal.aborted || res.writableEnded) return Promise.resolve();
    start();
    lastWrite = performance.now();
    if (res.write(frame)) return Promise.resolve();
    return new Promise((resolve) => {
      const stall =
        options.stallLimitMs === undefined
          ? undefined
          : setTimeout(() => res.destroy(), options.stallLimitMs);
      const done = () => {
        clearTimeout(stall);
        res.off("drain", done);
        gone.signal.removeEventListener("abort", done);
        resolve();
      };
      res.once("drain", done);
      gone.signal.addEventListener("abort", done, { once: true });
    });
  };
  return {
    signal: gone.signal,
    send: (event, data) => write(sseFrame(event, data)),
    write,
    end() {
      stopKeepAlive();
      if (res.writableEnded || gone.signal.aborted) return;
      start();
      res.end();
    },
    cutOff() {
      stopKeepAlive();
      res.destroy();
    },
    answerInstead(status, body, without = []) {
      if (started || res.writableEnded || gone.signal.aborted) return false;
      stopKeepAlive();
      started = true;
      const kept = { ...headers };
      for (const name of without) delete kept[name];
      res.writeHead(status, { ...kept, "content-type": "application/json; charset=utf-8" });
      res.end(JSON.stringify(body));
      return true;
    },
  };
}
