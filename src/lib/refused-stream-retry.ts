import { ConnectError, type Transport } from "@connectrpc/connect";

/**
 * Whether a call failed because the server refused its HTTP/2 stream
 * unprocessed (RST_STREAM REFUSED_STREAM): a server draining after its
 * GOAWAY refuses the streams a client opened before that GOAWAY reached it.
 * HTTP/2 (RFC 9113, 8.7) makes such a request safe to send again. Node's
 * words for it ("… NGHTTP2_REFUSED_STREAM"), and those a Connect error
 * carries for it ("… REFUSED_STREAM (0x7)"), both name it.
 */
export function refusedStream(err: unknown): boolean {
  return ConnectError.from(err).rawMessage.includes("REFUSED_STREAM");
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
