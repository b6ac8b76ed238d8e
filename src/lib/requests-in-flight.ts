import type { EventEmitter } from "node:events";
import type net from "node:net";

/**
 * HTTP/1.1 requests in flight per connection, so that draining ends idle
 * connections at once and busy ones as soon as their last response is sent.
 * A connection is counted from `open` until it closes; a response that
 * closes after its connection (a client that went away mid-request) finds
 * it gone and leaves it gone, so no closed connection is kept.
 */
export class RequestsInFlight {
  private readonly counts = new Map<net.Socket, number>();
  private draining = false;

  /** Counts a new connection, with no request yet, until it closes. */
  open(socket: net.Socket): void {
    if (socket.destroyed) return;
    this.counts.set(socket, 0);
    socket.once("close", () => this.counts.delete(socket));
  }

  /** Counts `res` on its connection until it closes. */
  begin(socket: net.Socket, res: EventEmitter): void {
    const count = this.counts.get(socket);
    if (count === undefined) return;
    this.counts.set(socket, count + 1);
    res.once("close", () => {
      const left = this.counts.get(socket);
      if (left === undefined) return;
      this.counts.set(socket, left - 1);
      if (this.draining && left === 1) socket.end();
    });
  }

  /** Whether `socket` has no request in flight (a connection not counted has none). */
  idle(socket: net.Socket): boolean {
    return (this.counts.get(socket) ?? 0) === 0;
  }

  /** Starts draining: idle connections end now, the others after their last response. */
  drain(): void {
    this.draining = true;
    for (const [socket, requests] of this.counts) {
      if (requests === 0) socket.end();
    }
  }

  /** How many connections are counted (for tests). */
  get size(): number {
    return this.counts.size;
  }
}
