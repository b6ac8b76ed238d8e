import {
  create,
  createFileRegistry,
  type DescField,
  type DescMessage,
  fromBinary,
  type Message,
  ScalarType,
  toBinary,
} from "@bufbuild/protobuf";
import {
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
  StringValueSchema,
  TimestampSchema,
} from "@bufbuild/protobuf/wkt";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FilterRejectionSchema, file_chat_v1_errors } from "../../gen/chat/v1/errors_pb.js";
import { file_chat_v1_filter } from "../../gen/chat/v1/filter_pb.js";
import {
  file_chat_v1_history,
  HistoryServiceAppendBatchResponseSchema,
  HistoryServiceAppendBatchResultSchema,
  HistoryServiceAppendRequestSchema,
  HistoryServiceAppendResponseSchema,
  HistoryServiceListResponseSchema,
} from "../../gen/chat/v1/history_pb.js";
import {
  file_chat_v1_llm,
  GenerateRequestSchema,
  GenerateResponseSchema,
  GenerateStreamRequestSchema,
  SamplingSchema,
  TokenUsageSchema,
} from "../../gen/chat/v1/llm_pb.js";
import {
  CheckAndIncRequestSchema,
  CheckAndIncResponseSchema,
  file_chat_v1_token,
} from "../../gen/chat/v1/token_pb.js";
import { codecFallbacks, codecFor, isCompiled } from "../../src/lib/codec.js";
import { anyText } from "../fixtures/text.js";

const schemas: DescMessage[] = [
  file_chat_v1_errors,
  file_chat_v1_filter,
  file_chat_v1_history,
  file_chat_v1_llm,
  file_chat_v1_token,
].flatMap((file) => file.messages);

const text = fc.oneof(
  anyText,
  // Long enough for a length of two bytes.
  fc.string({ unit: "grapheme", minLength: 40, maxLength: 300 }),
);
const int64 = fc.oneof(
  fc.bigInt({ min: 0n, max: 1_000_000n }),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
);

function scalar(field: DescField & { fieldKind: "scalar" }): fc.Arbitrary<unknown> {
  switch (field.scalar) {
    case ScalarType.STRING:
      return text;
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.INT32:
      return fc.oneof(fc.nat(1_000), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }));
    case ScalarType.INT64:
      return int64;
    case ScalarType.DOUBLE:
      return fc.oneof(fc.constantFrom(0, -0, 0.7), fc.double());
    default:
      throw new Error(`no arbitrary for ${field.toString()}`);
  }
}

function value(field: DescField, depth: number): fc.Arbitrary<unknown> {
  switch (field.fieldKind) {
    case "scalar":
      return scalar(field);
    case "message":
      return message(field.message, depth + 1);
    case "enum":
      return fc.oneof(fc.constantFrom(...field.enum.values.map((v) => v.number)), fc.integer());
    case "list":
      if (field.listKind === "scalar" && field.scalar === ScalarType.STRING) {
        // An empty string is written in a list, as no other.
        return fc.array(fc.oneof(fc.constant(""), text), { maxLength: 4 });
      }
      if (field.listKind !== "message") throw new Error(`no arbitrary for ${field.toString()}`);
      return fc.array(message(field.message, depth + 1), { maxLength: depth < 2 ? 3 : 0 });
    default:
      throw new Error(`no arbitrary for ${field.toString()}`);
  }
}

/** Any message of `desc`, with any subset of its fields set. */
function message(desc: DescMessage, depth = 0): fc.Arbitrary<Message> {
  const fields: Record<string, fc.Arbitrary<unknown>> = {};
  for (const field of desc.fields) {
    if (field.oneof === undefined) fields[field.localName] = value(field, depth);
  }
  for (const oneof of desc.oneofs) {
    fields[oneof.localName] = fc.oneof(
      ...oneof.fields.map((field) =>
        value(field, depth).map((v) => ({ case: field.localName, value: v })),
      ),
    );
  }
  return fc
    .record(fields, { requiredKeys: [] })
    .map((init) => create(desc, init as never) as Message);
}

/** A message as JSON, in its keys' order, bigints marked. */
const dump = (value: unknown) =>
  JSON.stringify(value, (_key, v) => (typeof v === "bigint" ? `${v}n` : v));

/** What a function gives or throws. */
function outcome(fn: () => unknown): string {
  try {
    const result = fn();
    return result instanceof Uint8Array
      ? `bytes ${Buffer.from(result).toString("hex")}`
      : dump(result);
  } catch (err) {
    return `error ${String(err)}`;
  }
}

describe("compiled protobuf codec", () => {
  it("covers the messages of the chat's calls", () => {
    for (const schema of [
      CheckAndIncRequestSchema,
      CheckAndIncResponseSchema,
      GenerateRequestSchema,
      GenerateStreamRequestSchema,
      GenerateResponseSchema,
      HistoryServiceAppendRequestSchema,
      HistoryServiceAppendResponseSchema,
      HistoryServiceListResponseSchema,
      ...file_chat_v1_filter.messages,
    ]) {
      expect(isCompiled(schema), schema.typeName).toBe(true);
    }
    // Oneofs and enums too (lists of strings: FilterRequest); well-known wrappers are left to protobuf-es.
    expect(isCompiled(HistoryServiceAppendBatchResultSchema)).toBe(true);
    expect(isCompiled(FilterRejectionSchema)).toBe(true);
    // A message of doubles and optional fields is protobuf-es's, inside a compiled one.
    expect(isCompiled(SamplingSchema)).toBe(false);
    expect(isCompiled(StringValueSchema)).toBe(false);
  });

  for (const schema of schemas) {
    describe(schema.typeName, () => {
      const codec = codecFor(schema);
      // A compiled type's own messages never go to protobuf-es.
      const compiled = isCompiled(schema);
      const expectCompiled = (run: () => void) => {
        const before = codecFallbacks();
        run();
        if (compiled) expect(codecFallbacks()).toBe(before);
      };

      it("writes the bytes toBinary writes", () => {
        fc.assert(
          fc.property(message(schema), (m) => {
            expectCompiled(() =>
              expect(Buffer.from(codec.encode(m)).toString("hex")).toBe(
                Buffer.from(toBinary(schema, m)).toString("hex"),
              ),
            );
          }),
          { numRuns: 300 },
        );
      });

      it("reads the message fromBinary reads, with its keys in the same order", () => {
        fc.assert(
          fc.property(message(schema), (m) => {
            const bytes = toBinary(schema, m);
            let decoded: Message | undefined;
            expectCompiled(() => {
              decoded = codec.decode(bytes);
            });
            expect(decoded).toStrictEqual(fromBinary(schema, bytes));
            expect(dump(decoded)).toBe(dump(fromBinary(schema, bytes)));
          }),
          { numRuns: 300 },
        );
      });

      it("gives what fromBinary gives for damaged and random bytes, errors included", () => {
        const damaged = fc
          .tuple(message(schema), fc.nat(), fc.nat(255), fc.uint8Array({ maxLength: 12 }))
          .chain(([m, at, byte, tail]) => {
            const bytes = toBinary(schema, m);
            return fc.constantFrom(
              bytes.subarray(0, at % (bytes.length + 1)),
              bytes.length === 0
                ? bytes
                : bytes.map((b, i) => (i === at % bytes.length ? byte : b)),
              Buffer.concat([bytes, tail]),
            );
          });
        fc.assert(
          fc.property(fc.oneof(damaged, fc.uint8Array({ maxLength: 64 })), (bytes) => {
            expect(outcome(() => codec.decode(bytes))).toBe(
              outcome(() => fromBinary(schema, bytes)),
            );
          }),
          { numRuns: 500 },
        );
      });
    });
  }

  it("reads and writes the edges of int32 and int64", () => {
    const usage = codecFor(TokenUsageSchema);
    for (const n of [1, -1, 127, 128, 2 ** 31 - 1, -(2 ** 31)]) {
      const m = create(TokenUsageSchema, { promptTokens: n, totalTokens: -n | 0 });
      expect(Buffer.from(usage.encode(m))).toEqual(Buffer.from(toBinary(TokenUsageSchema, m)));
      expect(usage.decode(toBinary(TokenUsageSchema, m))).toStrictEqual(m);
    }
    const stamp = codecFor(TimestampSchema);
    for (const n of [1n, -1n, 2n ** 49n - 1n, 2n ** 49n, 2n ** 53n, 2n ** 63n - 1n, -(2n ** 63n)]) {
      const m = create(TimestampSchema, { seconds: n });
      expect(Buffer.from(stamp.encode(m))).toEqual(Buffer.from(toBinary(TimestampSchema, m)));
      expect(stamp.decode(toBinary(TimestampSchema, m))).toStrictEqual(m);
    }
  });

  it("writes a nested message whose length takes one, two and three bytes", () => {
    const codec = codecFor(HistoryServiceAppendResponseSchema);
    for (const length of [0, 100, 127, 128, 200, 16_383, 16_384, 100_000]) {
      const m = create(HistoryServiceAppendResponseSchema, {
        entry: { text: "x".repeat(length), reply: "é".repeat(length % 50) },
        created: true,
      });
      expect(Buffer.from(codec.encode(m))).toEqual(
        Buffer.from(toBinary(HistoryServiceAppendResponseSchema, m)),
      );
      expect(codec.decode(codec.encode(m))).toStrictEqual(m);
    }
  });

  it("writes every byte when a field falls at the end of its scratch buffer", () => {
    // Small results fill the buffer little by little; each ends with a
    // five-byte int32, landing at every offset near the end.
    const schema = HistoryServiceAppendBatchResponseSchema;
    const codec = codecFor(schema);
    const error = (code: number, message = "") => ({
      result: { case: "error" as const, value: { code, message } },
    });
    // A message past 1 MB leaves the codec a fresh, small scratch buffer.
    const large = create(schema, { results: [error(1, "x".repeat(2 ** 21))] });
    for (let pad = 0; pad < 10; pad++) {
      codec.encode(large);
      const results = [
        error(1, "m".repeat(pad)),
        ...Array.from({ length: 1_650 }, () => error(2 ** 30)),
      ];
      const m = create(schema, { results });
      expect(Buffer.from(codec.encode(m)).equals(toBinary(schema, m))).toBe(true);
    }
  });

  it("keeps unknown fields, reading and writing, as protobuf-es does", () => {
    const codec = codecFor(CheckAndIncRequestSchema);
    const known = toBinary(
      CheckAndIncRequestSchema,
      create(CheckAndIncRequestSchema, { userId: "u1" }),
    );
    // Field 9, a varint 5.
    const bytes = Buffer.concat([known, Buffer.from([0x48, 0x05])]);
    const decoded = codec.decode(bytes);
    expect(decoded.$unknown?.map(({ no, wireType, data }) => [no, wireType, [...data]])).toEqual([
      [9, 0, [5]],
    ]);
    expect(Buffer.from(codec.encode(decoded))).toEqual(bytes);
  });

  it("reads a message protobuf-es reads inside a compiled one as fromBinary does, unknown fields included", () => {
    const codec = codecFor(GenerateRequestSchema);
    // Sampling with its field 9, a varint 5, unknown.
    const sampling = Buffer.concat([
      toBinary(SamplingSchema, create(SamplingSchema, { temperature: 0.5 })),
      Buffer.from([0x48, 0x05]),
    ]);
    const bytes = new Uint8Array(
      Buffer.concat([
        toBinary(GenerateRequestSchema, create(GenerateRequestSchema, { text: "hi" })),
        Buffer.from([0x2a, sampling.length]),
        sampling,
      ]),
    );
    const decoded = codec.decode(bytes);
    expect(decoded).toStrictEqual(fromBinary(GenerateRequestSchema, bytes));
    expect(Buffer.from(codec.encode(decoded))).toEqual(Buffer.from(bytes));
  });

  it("writes and reads every field of a type protobuf-es reads, however often it is met", () => {
    const field = (name: string, number: number, type: string) => ({
      name,
      number,
      jsonName: name,
      label: FieldDescriptorProto_Label.OPTIONAL,
      ...(type === "double"
        ? { type: FieldDescriptorProto_Type.DOUBLE }
        : { type: FieldDescriptorProto_Type.MESSAGE, typeName: `.t.${type}` }),
    });
    const registry = createFileRegistry(
      create(FileDescriptorProtoSchema, {
        name: "t.proto",
        package: "t",
        syntax: "proto3",
        messageType: [
          // Two fields of one type with doubles.
          { name: "Pair", field: [field("a", 1, "Weights"), field("b", 2, "Weights")] },
          { name: "Weights", field: [field("x", 1, "double")] },
          // A type with doubles held by a type it holds, and held beside it.
          { name: "Outer", field: [field("a", 1, "Loop"), field("c", 2, "Inner")] },
          { name: "Loop", field: [field("c", 1, "Inner"), field("x", 2, "double")] },
          { name: "Inner", field: [field("a", 1, "Loop")] },
        ],
      }),
      () => undefined,
    );
    const cases: [string, object][] = [
      ["t.Pair", { a: { x: 1 }, b: { x: 2 } }],
      ["t.Outer", { a: { x: 1 }, c: { a: { x: 2, c: { a: { x: 3 } } } } }],
    ];
    for (const [name, init] of cases) {
      const schema = registry.getMessage(name) as DescMessage;
      const codec = codecFor(schema);
      expect(isCompiled(schema), name).toBe(true);
      const m = create(schema, init as never);
      const bytes = toBinary(schema, m);
      expect(Buffer.from(codec.encode(m)).toString("hex"), name).toBe(
        Buffer.from(bytes).toString("hex"),
      );
      expect(codec.decode(bytes), name).toStrictEqual(fromBinary(schema, bytes));
    }
  });

  it("throws what toBinary throws for a value of the wrong type or message", () => {
    const codec = codecFor(CheckAndIncRequestSchema);
    const good = create(CheckAndIncRequestSchema, { userId: "u1", cost: 5n });
    const errors = [
      { ...good, cost: 2n ** 64n },
      { ...good, cost: "five" },
      { ...good, $typeName: "chat.v1.FilterRequest" },
    ];
    // protobuf-es writes these (a number for an int64, a number as a string's text).
    const accepted = [
      { ...good, cost: 5 },
      { ...good, userId: 7 },
    ];
    for (const bad of [...errors, ...accepted] as unknown as Message[]) {
      const expected = outcome(() => toBinary(CheckAndIncRequestSchema, bad as never));
      expect(expected.startsWith("error ")).toBe(errors.includes(bad as never));
      expect(outcome(() => codec.encode(bad as never))).toBe(expected);
    }
  });
});
