import type { ServerResponse } from "node:http";

/**
 * A signal aborted when the client closes its connection before `res` has
 * finished: what a streamed reply stops writing on, and what cancels a
 * unary chat's model call (a model server stops generating when its request
 * is closed). The default reason, an AbortError, is what RPC clients read as
 * "cancelled".
 */
export function clientGoneSignal(res: ServerResponse): AbortSignal {
  const gone = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) gone.abort();
  };
  res.once("close", onClose);
  if (res.destroyed) onClose();
  return gone.signal;
}
