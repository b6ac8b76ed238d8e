import type { Transport } from "@connectrpc/connect";
import { causesOf } from "./causes.js";

/**
 * Whether an HTTP/2 call failed because the server refused its stream
 * unprocessed (RST_STREAM REFUSED_STREAM): a server draining after its
 * GOAWAY refuses the streams a client opened before that GOAWAY reached it.
 * HTTP/2 (RFC 9113, 8.7) makes such a request safe to send again.
 */
export function refusedStream(err: unknown): boolean {
  for (const cause of causesOf(err)) {
    const { code } = cause as { code?: unknown };
    if (code === "ERR_HTTP2_STREAM_ERROR" && cause.message.includes("NGHTTP2_REFUSED_STREAM")) {
      return true;
    }
  }
  return false;
}

/**
 * Sends a unary call once more when the server refused its stream
 * unprocessed (`refusedStream`): the transport has taken the server's GOAWAY
 * by then, so the call goes on a new connection (to another replica, behind
 * a Kubernetes Service), within what is left of its timeout. The frames
 * transport does the same with its Refused frame, and the gateway opens a
 * refused model stream again itself (`openedAgainIfRefused`). Without it, a
 * rolling update of a service failed the chats whose unary call over gRPC
 * met the old replica's GOAWAY in flight ("Stream closed with error code
 * NGHTTP2_REFUSED_STREAM", as INTERNAL).
 */
export function retryRefusedStreams(transport: Transport): Transport {
  return {
    async unary(method, signal, timeoutMs, header, input, contextValues) {
      const started = performance.now();
      try {
        return await transport.unary(method, signal, timeoutMs, header, input, contextValues);
      } catch (err) {
        if (!refusedStream(err) || signal?.aborted === true) throw err;
        const left =
          timeoutMs === undefined
            ? undefined
            : Math.max(1, timeoutMs - (performance.now() - started));
        return transport.unary(method, signal, left, header, input, contextValues);
      }
    },
    stream: (...args) => transport.stream(...args),
  };
}
