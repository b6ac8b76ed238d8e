import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { getTextEncoding } from "@bufbuild/protobuf/wire";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { HistoryServiceAppendRequestSchema } from "../../gen/chat/v1/history_pb.js";
import { useBufferUtf8Encoding } from "../../src/lib/utf8.js";
import { anyText } from "../fixtures/text.js";

describe("protobuf strings encoded with Buffer.from", () => {
  const textEncoder = new TextEncoder();
  // Lone surrogates come back as U+FFFD; a leading U+FEFF is part of the text.
  const textDecoder = new TextDecoder("utf-8", { ignoreBOM: true });

  it("gives the bytes TextEncoder gives, for any string", () => {
    useBufferUtf8Encoding();
    const { encodeUtf8 } = getTextEncoding();
    expect([...encodeUtf8("\ud800x")]).toEqual([0xef, 0xbf, 0xbd, 0x78]);
    fc.assert(
      fc.property(anyText, (text) => {
        expect([...encodeUtf8(text)]).toEqual([...textEncoder.encode(text)]);
      }),
    );
  });

  it("round-trips messages, small and past the shared pool's size", () => {
    useBufferUtf8Encoding();
    fc.assert(
      fc.property(anyText, fc.nat(10_000), (text, repeat) => {
        const long = "日本語 ".repeat(repeat);
        const schema = HistoryServiceAppendRequestSchema;
        const message = create(schema, { userId: text, text: long, reply: text });
        const decoded = fromBinary(schema, toBinary(schema, message));
        const expected = textDecoder.decode(textEncoder.encode(text));
        expect([decoded.userId, decoded.text, decoded.reply]).toEqual([expected, long, expected]);
      }),
      { numRuns: 200 },
    );
  });

  it("keeps a leading U+FEFF, in every string field", () => {
    useBufferUtf8Encoding();
    const schema = HistoryServiceAppendRequestSchema;
    const message = create(schema, { userId: "\ufeffu1", text: "\ufeff", reply: "\ufeffhi" });
    const decoded = fromBinary(schema, toBinary(schema, message));
    expect([decoded.userId, decoded.text, decoded.reply]).toEqual([
      "\ufeffu1",
      "\ufeff",
      "\ufeffhi",
    ]);
    expect(getTextEncoding().decodeUtf8(new Uint8Array([0xef, 0xbb, 0xbf, 0x61]), true)).toBe(
      "\ufeffa",
    );
  });

  it("is configured once, however often it is asked", () => {
    useBufferUtf8Encoding();
    const first = getTextEncoding();
    useBufferUtf8Encoding();
    expect(getTextEncoding()).toBe(first);
  });
});
