import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FilterRejectionReason, FilterRejectionSchema } from "../gen/chat/v1/errors_pb.js";
import { FilterService } from "../gen/chat/v1/filter_pb.js";
import { LLMService } from "../gen/chat/v1/llm_pb.js";
import type { ClientConfig } from "./lib/config.js";
import { readUpstreamCa } from "./lib/tls.js";

/**
 * The seed's client: Filter, then LLM, directly over gRPC, printing the
 * seed's lines. Returns the exit code: 0 when the chain answered (a blocked
 * text included), 1 when a service failed.
 */
export async function runClient(
  text: string,
  config: ClientConfig,
  print: (line: string) => void = console.log,
): Promise<number> {
  const ca = await readUpstreamCa(config.caFile);
  const transport = (baseUrl: string) =>
    createGrpcTransport({
      baseUrl,
      defaultTimeoutMs: config.timeoutMs,
      ...(ca === undefined ? {} : { nodeOptions: { ca } }),
    });
  const filter = createClient(FilterService, transport(config.filterUrl));
  const llm = createClient(LLMService, transport(config.llmUrl));

  let cleaned: string;
  try {
    ({ cleaned } = await filter.filter({ text }));
  } catch (err) {
    const cause = ConnectError.from(err);
    const [rejection] = cause.findDetails(FilterRejectionSchema);
    if (cause.code === Code.InvalidArgument && rejection !== undefined) {
      print(
        rejection.reason === FilterRejectionReason.EMPTY
          ? `❌ 文本为空（清洗后没有内容）： ${text}`
          : `❌ 文本被过滤（包含违禁词）： ${text}`,
      );
      return 0;
    }
    print(`❌ filter failed: ${cause.message}`);
    return 1;
  }
  print(`✅ 过滤后文本： ${cleaned}`);

  try {
    const { reply } = await llm.generate({ text: cleaned });
    print(`LLM reply => ${reply}`);
    return 0;
  } catch (err) {
    print(`❌ llm failed: ${ConnectError.from(err).message}`);
    return 1;
  }
}
