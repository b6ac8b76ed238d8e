import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { httpErrorFromRpc } from "../../src/gateway/errors.js";

describe("the HTTP answer to a failed upstream call", () => {
  it("is 429 for the token service's RESOURCE_EXHAUSTED (the quota), 500 for another stage's (a size limit)", () => {
    const tooLarge = new ConnectError("message larger than 1048576 bytes", Code.ResourceExhausted);
    expect(httpErrorFromRpc("token", tooLarge)).toEqual({
      status: 429,
      body: { error: "quota exceeded" },
    });
    for (const stage of ["filter", "llm"] as const) {
      expect(httpErrorFromRpc(stage, tooLarge)).toEqual({
        status: 500,
        body: { error: `${stage} failed` },
      });
    }
  });

  it("follows the gRPC code otherwise: INVALID_ARGUMENT 400, anything else 500", () => {
    const invalid = new ConnectError("bad", Code.InvalidArgument);
    expect(httpErrorFromRpc("llm", invalid)).toEqual({
      status: 400,
      body: { error: "llm failed" },
    });
    const down = new ConnectError("down", Code.Unavailable);
    expect(httpErrorFromRpc("token", down)).toEqual({
      status: 500,
      body: { error: "token failed" },
    });
  });
});
