import { describe, expect, it } from "vitest";
import { bracketIpv6Authority, localUrlHost } from "../../src/lib/local-host.js";

describe("localUrlHost", () => {
  it("reaches a wildcard bind through loopback", () => {
    expect(localUrlHost("0.0.0.0")).toBe("127.0.0.1");
    expect(localUrlHost("::")).toBe("127.0.0.1");
  });

  it("puts an IPv6 address in brackets and leaves others alone", () => {
    expect(localUrlHost("::1")).toBe("[::1]");
    expect(localUrlHost("fe80::1")).toBe("[fe80::1]");
    expect(localUrlHost("127.0.0.1")).toBe("127.0.0.1");
    expect(localUrlHost("localhost")).toBe("localhost");
  });
});

describe("bracketIpv6Authority", () => {
  const fixed = (authority: string | undefined) => {
    const headers: Record<string, unknown> = { ":authority": authority };
    bracketIpv6Authority(headers);
    return headers[":authority"];
  };

  it("brackets the IPv6 address Node's HTTP/2 client sends bare", () => {
    expect(fixed("::1:50052")).toBe("[::1]:50052");
    expect(fixed("fe80::1:8080")).toBe("[fe80::1]:8080");
  });

  it("leaves other authorities alone", () => {
    expect(fixed("[::1]:50052")).toBe("[::1]:50052");
    expect(fixed("127.0.0.1:50052")).toBe("127.0.0.1:50052");
    expect(fixed("filter:50052")).toBe("filter:50052");
    expect(fixed(undefined)).toBeUndefined();
  });
});
