import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { LLMService } from "../../../gen/chat/v1/llm_pb.js";
import type { LlmBackend } from "./backend.js";

export interface LlmServiceDeps {
  readonly backend: LlmBackend;
}

/** chat.v1.LLMService over an LlmBackend. */
export function createLlmService({ backend }: LlmServiceDeps): ServiceImpl<typeof LLMService> {
  return {
    async generate(req, ctx) {
      if (req.text === "") {
        throw new ConnectError("text is required", Code.InvalidArgument);
      }
      const { reply } = await backend.generate({ text: req.text, userId: req.userId }, ctx.signal);
      return { reply };
    },
  };
}
