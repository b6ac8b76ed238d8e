import { Code } from "@connectrpc/connect";

/**
 * The one table that turns a gRPC code returned by a service into the
 * gateway's HTTP status (contract): the caller's mistake is 400, an exhausted
 * quota is 429, anything else is the gateway's failure, 500.
 */
export function httpStatusFromCode(code: Code): 400 | 429 | 500 {
  switch (code) {
    case Code.InvalidArgument:
      return 400;
    case Code.ResourceExhausted:
      return 429;
    default:
      return 500;
  }
}
