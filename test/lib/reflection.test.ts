import { create, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { file_chat_v1_errors } from "../../gen/chat/v1/errors_pb.js";
import { HistoryService } from "../../gen/chat/v1/history_pb.js";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  type ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { registerReflection } from "../../src/lib/reflection.js";

const transport = createRouterTransport((router) =>
  registerReflection(router, [HistoryService.file, file_chat_v1_errors], [HistoryService.typeName]),
);

type Ask = { case: "fileByFilename" | "fileContainingSymbol"; value: string };

/** One reflection request over a stream of its own: the names of the files answered, or the error code. */
async function ask(messageRequest: Ask, service = ServerReflection): Promise<string[] | number> {
  const client = createClient(service as typeof ServerReflection, transport);
  async function* one() {
    yield create(ServerReflectionRequestSchema, { messageRequest });
  }
  let answer: ServerReflectionResponse | undefined;
  for await (const res of client.serverReflectionInfo(one())) answer = res;
  const found = answer?.messageResponse;
  if (found?.case === "errorResponse") return found.value.errorCode;
  if (found?.case !== "fileDescriptorResponse") throw new Error(`unexpected answer ${found?.case}`);
  return found.value.fileDescriptorProto.map(
    (bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name,
  );
}

describe("server reflection", () => {
  it.each([
    ["chat/v1/history.proto", ["chat/v1/history.proto", "google/protobuf/timestamp.proto"]],
    ["google/protobuf/timestamp.proto", ["google/protobuf/timestamp.proto"]],
    ["chat/v1/errors.proto", ["chat/v1/errors.proto", "google/protobuf/timestamp.proto"]],
  ])("finds the file named %s, with its imports", async (name, files) => {
    expect(await ask({ case: "fileByFilename", value: name })).toEqual(files);
    expect(
      await ask({ case: "fileByFilename", value: name }, ServerReflectionV1alpha as never),
    ).toEqual(files);
  });

  it.each([
    "chat.v1.HistoryService",
    "chat.v1.HistoryService.List",
    "chat.v1.HistoryServiceListRequest",
    "chat.v1.HistoryServiceListRequest.user_id",
  ])("finds the file containing %s", async (symbol) => {
    expect(await ask({ case: "fileContainingSymbol", value: symbol })).toContain(
      "chat/v1/history.proto",
    );
  });

  it("finds an enum value by its full name, scoped beside its enum", async () => {
    expect(
      await ask({ case: "fileContainingSymbol", value: "chat.v1.FILTER_REJECTION_REASON_BLOCKED" }),
    ).toContain("chat/v1/errors.proto");
  });

  it.each([
    ["fileByFilename", "chat/v1/history"],
    ["fileByFilename", "chat/v1/nothing.proto"],
    ["fileContainingSymbol", "chat.v1.Nothing"],
  ] as const)("answers NOT_FOUND for %s %s", async (kind, value) => {
    expect(await ask({ case: kind, value })).toBe(5);
  });

  it("lists the extension numbers of a message type it knows (none), NOT_FOUND for one it does not", async () => {
    const client = createClient(ServerReflection, transport);
    async function* asks() {
      for (const value of ["chat.v1.HistoryServiceListRequest", "chat.v1.Nothing"]) {
        yield create(ServerReflectionRequestSchema, {
          messageRequest: { case: "allExtensionNumbersOfType", value },
        });
      }
      yield create(ServerReflectionRequestSchema, {
        messageRequest: {
          case: "fileContainingExtension",
          value: { containingType: "chat.v1.HistoryServiceListRequest", extensionNumber: 100 },
        },
      });
    }
    const answers = [];
    for await (const res of client.serverReflectionInfo(asks())) answers.push(res.messageResponse);
    expect(answers).toMatchObject([
      {
        case: "allExtensionNumbersResponse",
        value: { baseTypeName: "chat.v1.HistoryServiceListRequest", extensionNumber: [] },
      },
      { case: "errorResponse", value: { errorCode: 5 } },
      { case: "errorResponse", value: { errorCode: 5 } },
    ]);
  });
});
