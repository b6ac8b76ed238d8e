import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { FilterRejectionReason, FilterRejectionSchema } from "../../../gen/chat/v1/errors_pb.js";
import type { FilterService } from "../../../gen/chat/v1/filter_pb.js";
import type { TermMatcher } from "./terms.js";
import { cleanText } from "./text.js";

export interface FilterServiceDeps {
  readonly matcher: TermMatcher;
}

function reject(message: string, reason: FilterRejectionReason): ConnectError {
  return new ConnectError(message, Code.InvalidArgument, undefined, [
    { desc: FilterRejectionSchema, value: { reason } },
  ]);
}

/** chat.v1.FilterService: cleans the text, refuses empty or banned text. */
export function createFilterService({
  matcher,
}: FilterServiceDeps): ServiceImpl<typeof FilterService> {
  return {
    filter(req) {
      const cleaned = cleanText(req.text);
      if (cleaned === "") {
        throw reject("text is empty after cleaning", FilterRejectionReason.EMPTY);
      }
      if (matcher.matches(cleaned)) {
        throw reject("text contains a banned term", FilterRejectionReason.BLOCKED);
      }
      return { cleaned };
    },
  };
}
