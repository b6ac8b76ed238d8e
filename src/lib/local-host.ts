import { isIPv6 } from "node:net";

/**
 * The host part of a URL that reaches, from this machine, a process bound to
 * `host`: loopback for a wildcard bind, an IPv6 address in brackets.
 */
export function localUrlHost(host: string): string {
  // 127.0.0.1 for `::` too: Linux binds `::` dual-stack, and IPv4 loopback is
  // there even where IPv6 is turned off on loopback (as in some containers).
  if (host === "0.0.0.0" || host === "::" || host === "") return "127.0.0.1";
  return host.includes(":") ? `[${host}]` : host;
}

/** The host of `url` as a socket takes it: an IPv6 address without its brackets. */
export function urlHostAddress(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, "$1");
}

/**
 * Puts the brackets back on an IPv6 address in an HTTP/2 `:authority`.
 * Node's HTTP/2 client (used for gRPC and streaming calls) sends
 * `::1:50052` for `http://[::1]:50052`, which connect-node cannot make a URL
 * of, so every such call to a service on an IPv6 HOST would fail.
 */
export function bracketIpv6Authority(headers: Record<string, unknown>): void {
  const authority = headers[":authority"];
  if (typeof authority !== "string" || authority.startsWith("[")) return;
  const withPort = /^(.*):(\d{1,5})$/.exec(authority);
  if (withPort !== null && isIPv6(withPort[1] as string)) {
    headers[":authority"] = `[${withPort[1]}]:${withPort[2]}`;
  } else if (isIPv6(authority)) {
    headers[":authority"] = `[${authority}]`;
  }
}

/** The last authority found to make a URL: clients send the same one call after call. */
let goodAuthority = "";

/**
 * Whether a request's authority (`:authority`, else Host) is one connect-node
 * can make the call's URL of. A request without one (HTTP/1.0 may omit Host;
 * HTTP/1.1 sends it empty for a target without one) is given `localhost`.
 * For one no URL can have (`a b`, a port over 65535) connect-fastify
 * answered an empty 200, as if the call had been served.
 */
export function settleAuthority(headers: Record<string, unknown>): boolean {
  const name = headers[":authority"] === undefined ? "host" : ":authority";
  const authority = headers[name];
  if (authority === undefined || authority === "") {
    headers[name] = "localhost";
    return true;
  }
  if (authority === goodAuthority) return true;
  if (typeof authority !== "string" || !URL.canParse(`http://${authority}`)) return false;
  goodAuthority = authority;
  return true;
}
