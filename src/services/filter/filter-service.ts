import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { Registry } from "prom-client";
import { FilterRejectionReason, FilterRejectionSchema } from "../../../gen/chat/v1/errors_pb.js";
import type { FilterService } from "../../../gen/chat/v1/filter_pb.js";
import { counter } from "../../lib/metrics.js";
import type { TermMatcher } from "./terms.js";
import { cleanText } from "./text.js";

export interface FilterServiceDeps {
  readonly matcher: TermMatcher;
  /** Where to count refusals; none when absent. */
  readonly registry?: Registry;
}

function reject(message: string, reason: FilterRejectionReason): ConnectError {
  return new ConnectError(message, Code.InvalidArgument, undefined, [
    { desc: FilterRejectionSchema, value: { reason } },
  ]);
}

/** chat.v1.FilterService: cleans the text, refuses empty or banned text, and banned context. */
export function createFilterService({
  matcher,
  registry,
}: FilterServiceDeps): ServiceImpl<typeof FilterService> {
  const refusals =
    registry &&
    counter(registry, "chatmesh_filter_refusals_total", "Texts refused by the filter, by reason", [
      "reason",
    ]);
  return {
    filter(req) {
      const cleaned = cleanText(req.text);
      if (cleaned === "") {
        refusals?.inc({ reason: "empty" });
        throw reject("text is empty after cleaning", FilterRejectionReason.EMPTY);
      }
      if (matcher.matches(cleaned)) {
        refusals?.inc({ reason: "blocked" });
        throw reject("text contains a banned term", FilterRejectionReason.BLOCKED);
      }
      // Matched as the text is, on its cleaned form: white space folded as there.
      const at = req.context.findIndex((text) => matcher.matches(cleanText(text)));
      if (at !== -1) {
        refusals?.inc({ reason: "blocked" });
        throw reject(`context[${at}] contains a banned term`, FilterRejectionReason.BLOCKED);
      }
      return { cleaned, contextChecked: req.context.length };
    },
  };
}
