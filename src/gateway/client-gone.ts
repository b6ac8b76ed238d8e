import type { ServerResponse } from "node:http";
import { Cancellation } from "../lib/unary-transport.js";

/**
 * Cancelled when the client closes its connection before `res` has
 * finished: what cancels a unary chat's model call, so a model server stops
 * generating for no one. A `Cancellation`, not an `AbortSignal`, whose
 * listeners cost too much to give every chat one.
 */
export function cancelledOnClose(res: ServerResponse): Cancellation {
  const gone = new Cancellation();
  const onClose = () => {
    if (!res.writableFinished) gone.cancel();
  };
  if (res.destroyed) onClose();
  else res.once("close", onClose);
  return gone;
}
