import {
  createRegistry,
  type DescEnum,
  type DescFile,
  type DescMessage,
  type Registry,
  toBinary,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import {
  type ServerReflectionRequest,
  type ServerReflectionResponse,
  ServerReflection as ServerReflectionV1,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

type Request = Omit<ServerReflectionRequest, "$typeName">;
type ResponseInit = Omit<ServerReflectionResponse, "$typeName" | "originalRequest" | "validHost">;

const notFound = 5;

/** The files and their imports, each once, dependencies first. */
function withDependencies(file: DescFile, seen = new Set<string>()): Uint8Array[] {
  if (seen.has(file.name)) return [];
  seen.add(file.name);
  return [
    toBinary(FileDescriptorProtoSchema, file.proto),
    ...file.dependencies.flatMap((dep) => withDependencies(dep, seen)),
  ];
}

/**
 * Every file reachable from `files` through imports, by its file name
 * (`chat/v1/llm.proto`: protobuf-es's `DescFile.name` drops `.proto`).
 */
function fileIndex(files: readonly DescFile[]): Map<string, DescFile> {
  const index = new Map<string, DescFile>();
  const add = (file: DescFile) => {
    if (index.has(file.proto.name)) return;
    index.set(file.proto.name, file);
    file.dependencies.forEach(add);
  };
  files.forEach(add);
  return index;
}

/**
 * The file of each enum value, by its full name: a value is scoped beside
 * its enum (`chat.v1.FILTER_REJECTION_REASON_BLOCKED`), as protoc resolves it.
 */
function enumValueIndex(files: Iterable<DescFile>): Map<string, DescFile> {
  const index = new Map<string, DescFile>();
  for (const file of files) {
    const enums = [...file.enums, ...file.messages.flatMap(nestedEnums)];
    for (const desc of enums) {
      const scope = desc.typeName.slice(0, desc.typeName.lastIndexOf(".") + 1);
      for (const value of desc.values) index.set(scope + value.name, file);
    }
  }
  return index;
}

function nestedEnums(message: DescMessage): DescEnum[] {
  return [...message.nestedEnums, ...message.nestedMessages.flatMap(nestedEnums)];
}

function answer(
  index: Map<string, DescFile>,
  enumValues: Map<string, DescFile>,
  registry: Registry,
  services: readonly string[],
  req: Request,
): ResponseInit {
  const files = (file: DescFile | undefined): ResponseInit =>
    file === undefined
      ? {
          messageResponse: {
            case: "errorResponse",
            value: {
              $typeName: "grpc.reflection.v1.ErrorResponse",
              errorCode: notFound,
              errorMessage: "not found",
            },
          },
        }
      : {
          messageResponse: {
            case: "fileDescriptorResponse",
            value: {
              $typeName: "grpc.reflection.v1.FileDescriptorResponse",
              fileDescriptorProto: withDependencies(file),
            },
          },
        };
  const request = req.messageRequest;
  switch (request.case) {
    case "listServices":
      return {
        messageResponse: {
          case: "listServicesResponse",
          value: {
            $typeName: "grpc.reflection.v1.ListServiceResponse",
            service: services.map((name) => ({
              $typeName: "grpc.reflection.v1.ServiceResponse",
              name,
            })),
          },
        },
      };
    case "fileByFilename":
      return files(index.get(request.value));
    case "fileContainingSymbol": {
      const symbol = request.value;
      // A method's name is its service's name plus ".Method".
      const desc = registry.get(symbol) ?? registry.get(symbol.slice(0, symbol.lastIndexOf(".")));
      return files(
        desc?.kind === "service" ||
          desc?.kind === "message" ||
          desc?.kind === "enum" ||
          desc?.kind === "extension"
          ? desc.file
          : enumValues.get(symbol),
      );
    }
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = request.value;
      const message = registry.getMessage(containingType);
      return files(message && registry.getExtensionFor(message, extensionNumber)?.file);
    }
    case "allExtensionNumbersOfType": {
      // A type it knows has its extensions listed (none, often), as gRPC's
      // own servers answer; NOT_FOUND would tell the client it has no such type.
      const message = registry.getMessage(request.value);
      if (message === undefined) return files(undefined);
      const numbers: number[] = [];
      for (const desc of registry) {
        if (desc.kind === "extension" && desc.extendee.typeName === message.typeName) {
          numbers.push(desc.number);
        }
      }
      return {
        messageResponse: {
          case: "allExtensionNumbersResponse",
          value: {
            $typeName: "grpc.reflection.v1.ExtensionNumberResponse",
            baseTypeName: message.typeName,
            extensionNumber: numbers,
          },
        },
      };
    }
    default:
      return files(undefined);
  }
}

/**
 * Registers gRPC server reflection, v1 and v1alpha, describing `files` (and
 * everything they import) and listing `services`, so tools such as
 * `buf curl` and `grpcurl` work without a schema.
 */
export function registerReflection(
  router: ConnectRouter,
  files: readonly DescFile[],
  services: readonly string[],
): void {
  const index = fileIndex([...files, ServerReflectionV1.file, ServerReflectionV1alpha.file]);
  const registry = createRegistry(...index.values());
  const enumValues = enumValueIndex(index.values());
  const listed = [...services, ServerReflectionV1.typeName, ServerReflectionV1alpha.typeName];
  async function* serve(requests: AsyncIterable<Request>) {
    for await (const req of requests) {
      yield {
        ...answer(index, enumValues, registry, listed, req),
        validHost: req.host,
        originalRequest: req,
      };
    }
  }
  // v1alpha's messages have the same fields and numbers as v1's.
  router.service(ServerReflectionV1, { serverReflectionInfo: serve as never });
  router.service(ServerReflectionV1alpha, { serverReflectionInfo: serve as never });
}
