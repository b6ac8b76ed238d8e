import type { Transport } from "@connectrpc/connect";

/**
 * A transport that makes itself anew (new connections) for the calls that
 * come once the one it has is `maxAgeMs` old, give or take 10 % so that
 * replicas do not all reconnect at once. Calls in flight finish where they
 * started; the old transport's connections then close by its idle timeout.
 * A Kubernetes Service balances per connection, so a gateway holding its
 * first connections for good would never call the replicas started after
 * it: this spreads its calls over them, as gRPC servers' MAX_CONNECTION_AGE
 * does, without a call ever meeting a connection that is closing. 0 keeps
 * the first transport for good.
 */
export function createRotatingTransport(make: () => Transport, maxAgeMs: number): Transport {
  let current = make();
  if (maxAgeMs <= 0) return current;
  const nextAge = () => maxAgeMs * (0.9 + Math.random() * 0.2);
  let renewAt = performance.now() + nextAge();
  const fresh = (): Transport => {
    const now = performance.now();
    if (now >= renewAt) {
      current = make();
      renewAt = now + nextAge();
    }
    return current;
  };
  return {
    unary: (method, signal, timeoutMs, header, input, contextValues) =>
      fresh().unary(method, signal, timeoutMs, header, input, contextValues),
    stream: (method, signal, timeoutMs, header, input, contextValues) =>
      fresh().stream(method, signal, timeoutMs, header, input, contextValues),
  };
}
