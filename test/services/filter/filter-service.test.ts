import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { FilterRejectionReason, FilterRejectionSchema } from "../../../gen/chat/v1/errors_pb.js";
import { FilterService } from "../../../gen/chat/v1/filter_pb.js";
import { createFilterService } from "../../../src/services/filter/filter-service.js";
import { createTermMatcher } from "../../../src/services/filter/terms.js";

const client = createClient(
  FilterService,
  createRouterTransport((router) =>
    router.service(
      FilterService,
      createFilterService({ matcher: createTermMatcher(["foo", "bad word"]) }),
    ),
  ),
);

async function rejection(text: string, context: string[] = []): Promise<ConnectError> {
  try {
    await client.filter({ text, context });
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error(`expected ${JSON.stringify(text)} to be refused`);
}

describe("FilterService over a router transport", () => {
  it("returns the cleaned text", async () => {
    expect((await client.filter({ text: "Hello   world   from   Go!" })).cleaned).toBe(
      "Hello world from Go!",
    );
  });

  it("refuses a banned term with INVALID_ARGUMENT and a BLOCKED detail", async () => {
    const err = await rejection("this has foo inside");
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(FilterRejectionSchema)[0]?.reason).toBe(FilterRejectionReason.BLOCKED);
  });

  it("refuses text that is empty once cleaned with an EMPTY detail", async () => {
    const err = await rejection(" \u3000 ");
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(FilterRejectionSchema)[0]?.reason).toBe(FilterRejectionReason.EMPTY);
  });

  it("refuses a context (earlier messages) with a banned term as it refuses the text", async () => {
    const err = await rejection("hi", ["You are kind.", "", "say ＦＯＯ please"]);
    expect([err.code, err.rawMessage]).toEqual([
      Code.InvalidArgument,
      "context[2] contains a banned term",
    ]);
    expect(err.findDetails(FilterRejectionSchema)[0]?.reason).toBe(FilterRejectionReason.BLOCKED);
    // White space is folded as in the text: a term of two words across a line break.
    expect((await rejection("hi", ["a bad\n\n  word"])).rawMessage).toBe(
      "context[0] contains a banned term",
    );
    // A clean context passes, empty messages too; only the text is cleaned and answered.
    const ok = await client.filter({ text: " hi  there ", context: ["", "fine   words"] });
    expect(ok.cleaned).toBe("hi there");
    // It answers for every entry it checked, so a caller can tell it read them.
    expect(ok.contextChecked).toBe(2);
  });
});
