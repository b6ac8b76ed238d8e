/**
 * Micro-benchmarks, in one run: one unary RPC through each client transport
 * against the same LLM service process (gRPC over HTTP/2, Connect over
 * HTTP/2 and HTTP/1.1 with the stock connect-node transports, and the
 * gateway's lean transports: Connect over HTTP/1.1 and frames), the protobuf
 * encoding of a chat's messages, then the filter's matcher with 10,000 terms.
 * Options (env): MICRO_SECONDS (3), MICRO_CONCURRENCY (50).
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { create, type DescMessage, fromBinary, toBinary } from "@bufbuild/protobuf";
import { configureTextEncoding, getTextEncoding } from "@bufbuild/protobuf/wire";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { FilterRequestSchema, FilterResponseSchema } from "../gen/chat/v1/filter_pb.js";
import {
  GenerateRequestSchema,
  GenerateResponseSchema,
  LLMService,
} from "../gen/chat/v1/llm_pb.js";
import { CheckAndIncRequestSchema, CheckAndIncResponseSchema } from "../gen/chat/v1/token_pb.js";
import { type Codec, codecFallbacks, codecFor } from "../src/lib/codec.js";
import { createFastTransport } from "../src/lib/fast-transport.js";
import { createFramesTransport } from "../src/lib/frames-transport.js";
import { useBufferUtf8Encoding } from "../src/lib/utf8.js";
import { createTermMatcher } from "../src/services/filter/terms.js";
import { microBenchOptions, optionsOrExit } from "./options.js";
import { freePort, startProcess, stopOnInterrupt, waitHealthy } from "./stack.js";

const { seconds, concurrency } = optionsOrExit("make bench-micro", () =>
  microBenchOptions(process.env),
);

async function callsPerSecond(transport: Transport): Promise<number> {
  const client = createClient(LLMService, transport);
  const warmEnd = Date.now() + 1_000;
  while (Date.now() < warmEnd) await client.generate({ text: "warm up" });
  let calls = 0;
  const end = Date.now() + seconds * 1_000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < end) {
        await client.generate({ text: "Hello world from Go!" });
        calls++;
      }
    }),
  );
  return calls / seconds;
}

async function rpc(): Promise<Record<string, number>> {
  const port = await freePort();
  // Registered before the process starts: a signal between the two would end this one alone.
  const forget = stopOnInterrupt(() => llm.kill("SIGTERM"));
  const llm = startProcess("llm", { LLM_PORT: String(port) });
  try {
    await waitHealthy(port);
    const baseUrl = `http://127.0.0.1:${port}`;
    const grpc = createGrpcTransport({ baseUrl });
    const options: [string, Transport][] = [
      ["grpc http/2 (stock)", grpc],
      [
        "connect http/2 (stock)",
        createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }),
      ],
      [
        "connect http/1.1 (stock)",
        createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true }),
      ],
      [
        "connect http/1.1 (lean)",
        createFastTransport({ baseUrl, defaultTimeoutMs: 5_000, streamTransport: grpc }),
      ],
      [
        "frames (lean, multiplexed)",
        createFramesTransport({ baseUrl, defaultTimeoutMs: 5_000, streamTransport: grpc }),
      ],
    ];
    const results: Record<string, number> = {};
    for (const [name, transport] of options) results[name] = await callsPerSecond(transport);
    return results;
  } finally {
    forget();
    llm.kill("SIGTERM");
  }
}

function matcher(): Record<string, number> {
  const letters = "abcdefghijklmnopqrstuvwxyz";
  const word = (n: number) =>
    Array.from(randomBytes(n), (b) => letters[b % letters.length]).join("");
  const terms = Array.from({ length: 10_000 }, () => word(4 + ((randomBytes(1)[0] as number) % 9)));
  const m = createTermMatcher(terms);
  const ascii = Array.from({ length: 200 }, () => word(5))
    .join(" ")
    .replace(/[xq]/g, "Z");
  const unicode = `${ascii.slice(0, 500)} 这是一条最小链路测试 ｆｕｌｌｗｉｄｔｈ Straße ${ascii.slice(500)}`;
  // Non-ASCII throughout: Cyrillic, Greek and Chinese words, full-width letters.
  const nonAscii = Array.from(
    { length: 100 },
    (_, i) => ["Привет", "мир", "Γειά", "σου", "这是一条", "测试", "ｆｕｌｌ", "Straße"][i % 8],
  ).join(" ");
  const results: Record<string, number> = {};
  for (const [name, text] of [
    ["ascii text", ascii],
    ["unicode text", unicode],
    ["non-ascii text", nonAscii],
  ] as const) {
    let chars = 0;
    const end = performance.now() + seconds * 1_000;
    while (performance.now() < end) {
      for (let i = 0; i < 100; i++) m.matches(text);
      chars += text.length * 100;
    }
    results[`${name}, 10k terms (chars/s)`] = chars / seconds;
  }
  return results;
}

/**
 * µs to encode and decode the six messages of a chat's filter, token and
 * llm calls: with protobuf-es's `toBinary` and `fromBinary`, with its own
 * string encoder (TextEncoder) and with the one the servers configure
 * (Buffer.from), then with the compiled codec the lean paths use.
 */
function codec(): Record<string, number> {
  const messages: [DescMessage, object][] = [
    [FilterRequestSchema, { text: "Hello   world   from   Go!" }],
    [FilterResponseSchema, { cleaned: "Hello world from Go!" }],
    [
      CheckAndIncRequestSchema,
      { userId: "u123456", cost: 50n, chargeId: randomBytes(16).toString("hex") },
    ],
    [
      CheckAndIncResponseSchema,
      { remaining: 150n, limit: 200n, cost: 50n, resetTime: timestampNow() },
    ],
    [GenerateRequestSchema, { text: "Hello world from Go!" }],
    [GenerateResponseSchema, { reply: "Echo: Hello world from Go!" }],
  ];
  const built = messages.map(([schema, init]) => [schema, create(schema, init as never)] as const);
  const perChat = (codecs: readonly Codec[]) => {
    const rounds = 100_000;
    let best = Number.POSITIVE_INFINITY;
    for (let trial = 0; trial < 3; trial++) {
      const started = performance.now();
      for (let i = 0; i < rounds; i++) {
        for (let m = 0; m < codecs.length; m++) {
          const codec = codecs[m] as Codec;
          codec.decode(codec.encode((built[m] as (typeof built)[number])[1]));
        }
      }
      best = Math.min(best, ((performance.now() - started) * 1e3) / rounds);
    }
    return best;
  };
  const reflective = built.map(
    ([schema]): Codec => ({
      encode: (message) => toBinary(schema, message),
      decode: (bytes) => fromBinary(schema, bytes),
    }),
  );
  const stock = getTextEncoding();
  const textEncoder = perChat(reflective);
  useBufferUtf8Encoding();
  const bufferFrom = perChat(reflective);
  configureTextEncoding(stock);
  const before = codecFallbacks();
  const compiled = perChat(built.map(([schema]) => codecFor(schema)));
  if (codecFallbacks() !== before) throw new Error("the compiled codec fell back to protobuf-es");
  return {
    "protobuf-es, TextEncoder (its own)": textEncoder,
    "protobuf-es, Buffer.from": bufferFrom,
    "compiled codec (the lean paths')": compiled,
  };
}

const rpcResults = await rpc();
const codecResults = codec();
const matcherResults = matcher();
console.log(`\nunary RPC, ${concurrency} calls in flight, one LLM service process (calls/s):`);
for (const [name, value] of Object.entries(rpcResults))
  console.log(`  ${name.padEnd(26)} ${value.toFixed(0).padStart(8)}`);
console.log("protobuf encode + decode of a chat's six call messages (µs):");
for (const [name, value] of Object.entries(codecResults))
  console.log(`  ${name.padEnd(36)} ${value.toFixed(1).padStart(6)}`);
console.log("filter matcher, normalisation included:");
for (const [name, value] of Object.entries(matcherResults))
  console.log(`  ${name.padEnd(36)} ${(value / 1e6).toFixed(1).padStart(6)} M`);
const dir = fileURLToPath(new URL("./results/", import.meta.url));
mkdirSync(dir, { recursive: true });
writeFileSync(
  `${dir}micro-${new Date().toISOString().replace(/[:.]/g, "-")}.json`,
  `${JSON.stringify({ at: new Date().toISOString(), seconds, concurrency, rpc: rpcResults, codec: codecResults, matcher: matcherResults }, null, 2)}\n`,
);
