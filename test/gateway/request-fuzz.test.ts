import fc from "fast-check";
import type { FastifyInstance, InjectOptions, LightMyRequestResponse as Response } from "fastify";

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { createInProcessUpstreams } from "../fixtures/upstreams.js";

/**
 * Property-based tests of the gateway's request handling through the real
 * Fastify app and the real services (in process): whatever a caller sends,
 * the answer is one of the contract's statuses with a JSON body, and never a
 * 500 for the caller's own mistake.
 */

const numRuns = Number(process.env.FUZZ_RUNS ?? 150);
const contractStatuses = [200, 400, 413, 415, 429];

let small: FastifyInstance;
let large: FastifyInstance;

beforeAll(async () => {
  const logger = createLogger("gateway", "silent");
  small = await buildGateway({
    config: loadGatewayConfig({ MAX_TEXT_CHARS: "64", MAX_BODY_BYTES: "4096" }),
    logger,
    upstreams: createInProcessUpstreams(),
  });
  // Room for a 1 MB text, so that the text limit is what refuses it.
  large = await buildGateway({
    config: loadGatewayConfig({ MAX_BODY_BYTES: String(8 * 1_048_576) }),
    logger,
    upstreams: createInProcessUpstreams(),
  });
});
afterAll(async () => {
  await small?.close();
  await large?.close();
});

/** What every answer of POST /chat must look like. */
function expectContractAnswer(res: Response, statuses = contractStatuses): void {
  expect(statuses, `status ${res.statusCode}: ${res.body.slice(0, 200)}`).toContain(res.statusCode);
  expect(res.headers["content-type"]).toMatch(/^application\/json/);
  expect(res.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
  const body = JSON.parse(res.body) as Record<string, unknown>;
  if (res.statusCode === 200) {
    expect(typeof body.cleaned).toBe("string");
    expect(typeof body.reply).toBe("string");
    expect(typeof body.remaining).toBe("number");
  } else {
    expect(typeof body.error).toBe("string");
    expect(body.error).not.toBe("internal error");
  }
}

const post = (
  app: FastifyInstance,
  payload: string | Buffer,
  headers: Record<string, string> = {},
): Promise<Response> =>
  app.inject({
    method: "POST",
    url: "/chat",
    headers: { "content-type": "application/json", ...headers },
    payload,
  } as InjectOptions);

const strings = fc.oneof(
  fc.string(),
  fc.string({ unit: "grapheme" }),
  fc.string({ unit: "binary" }),
  fc.string({ unit: fc.constantFrom("\u200b", "\ufeff", "\u3000", "\ud800", "\udc00", "f", "O") }),
);

/** Anything JSON can carry, as a value of user_id or text. */
const jsonish = fc.oneof(
  strings,
  fc.constant(""),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(strings, { maxLength: 3 }),
  fc.dictionary(strings, strings, { maxKeys: 3 }),
);

/** Invalid UTF-8: overlong forms, stray continuation bytes, CESU surrogates, truncation. */
const badUtf8 = fc.constantFrom(
  [0xff],
  [0xc0, 0x80],
  [0x80],
  [0xed, 0xa0, 0x80],
  [0xed, 0xbf, 0xbf],
  [0xf4, 0x90, 0x80, 0x80],
  [0xe2, 0x82],
  [0xf0, 0x9f, 0x98],
);

describe("POST /chat under hostile input", () => {
  it("answers random bytes with a contract status", async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 512 }), async (bytes) => {
        expectContractAnswer(await post(small, Buffer.from(bytes)));
      }),
      { numRuns },
    );
  });

  it("answers any JSON value, and fields of any type, with a contract status", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.jsonValue(),
          fc.record({ user_id: jsonish, text: jsonish }, { requiredKeys: [] }),
          fc.record({ user_id: fc.string({ minLength: 1 }), text: jsonish }),
        ),
        async (value) => {
          const res = await post(small, JSON.stringify(value) ?? "null");
          expectContractAnswer(res);
          const ok =
            typeof value === "object" &&
            value !== null &&
            !Array.isArray(value) &&
            typeof (value as Record<string, unknown>).user_id === "string" &&
            (value as Record<string, unknown>).user_id !== "";
          // A missing or mistyped user_id never reaches the services.
          if (!ok) expect(res.json()).toEqual({ error: "bad json or missing user_id" });
        },
      ),
      { numRuns },
    );
  });

  it("answers deeply nested JSON with 400 and stays up", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1_000, max: 100_000 }),
        fc.constantFrom("array", "object", "in-user_id", "in-text"),
        async (depth, shape) => {
          const nest = (open: string, close: string) => open.repeat(depth) + close.repeat(depth);
          const payload = {
            array: nest("[", "]"),
            object: `${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`,
            "in-user_id": `{"user_id":${nest("[", "]")},"text":"hi"}`,
            "in-text": `{"user_id":"deep","text":${nest("[", "]")}}`,
          }[shape] as string;
          const res = await post(large, payload);
          expectContractAnswer(res, [400, 413]);
        },
      ),
      { numRuns: 12 },
    );
    expectContractAnswer(await post(small, '{"user_id":"after-deep","text":"still here"}'));
  });

  it("answers huge and odd numbers with 400", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom("1e999999", "-1e999999", "1e-999999", "-0", "123456789".repeat(300)),
        fc.constantFrom("user_id", "text"),
        async (number, field) => {
          const other = field === "user_id" ? '"text":"hi"' : '"user_id":"num"';
          const res = await post(large, `{"${field}":${number},${other}}`);
          expect(res.statusCode).toBe(400);
          expectContractAnswer(res);
        },
      ),
      { numRuns: 20 },
    );
  });

  it("refuses invalid UTF-8 inside JSON strings as bad JSON: decoded as U+FFFD, two user ids would be one", async () => {
    await fc.assert(
      fc.asyncProperty(
        badUtf8,
        fc.constantFrom("user_id", "text"),
        fc.string({ maxLength: 20 }),
        async (bad, field, around) => {
          const safe = JSON.stringify(around).slice(1, -1);
          const payload = Buffer.concat([
            Buffer.from(
              field === "user_id" ? '{"text":"hi","user_id":"' : '{"user_id":"u8","text":"',
            ),
            Buffer.from(safe),
            Buffer.from(bad),
            Buffer.from(safe),
            Buffer.from('"}'),
          ]);
          const res = await post(small, payload);
          expectContractAnswer(res);
          expect(res.json()).toEqual({ error: "bad json or missing user_id" });
        },
      ),
      { numRuns },
    );
  });

  it("refuses a user_id with a lone surrogate, which would share another id's quota (found by fuzzing)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom("\\ud800", "\\udfff", "\\udc00\\ud800", "a\\ud83d", "\\ud83d\\ude00"),
        fc.constantFrom("user_id", "text", "both"),
        fc.nat(),
        async (lone, field, n) => {
          const user = field === "text" ? `sur${n}` : `u${n}${lone}`;
          const text = field === "user_id" ? "hi" : `hello ${lone}`;
          const res = await post(small, `{"user_id":"${user}","text":"${text}"}`);
          expectContractAnswer(res);
          const isLone = lone !== "\\ud83d\\ude00";
          if (isLone && field !== "text") {
            expect(res.json()).toEqual({ error: "bad json or missing user_id" });
          } else {
            expect(res.statusCode).toBe(200);
            // A lone half in the text reaches the services as U+FFFD, as protobuf encodes it.
            expect(res.json().cleaned).not.toMatch(/\p{Cs}/u);
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it("answers 1 MB strings with 413 or 400, never more", async () => {
    const mb = "x".repeat(1_048_576);
    expect((await post(small, JSON.stringify({ user_id: "big", text: mb }))).statusCode).toBe(413);
    const res = await post(large, JSON.stringify({ user_id: "big", text: mb }));
    expect(res.json()).toEqual({ error: "text too long" });
    const user = await post(large, JSON.stringify({ user_id: mb, text: "hi" }));
    expectContractAnswer(user);
  });

  let dupUsers = 0;
  it("takes the last of duplicated keys, as JSON.parse does", async () => {
    await fc.assert(
      fc.asyncProperty(jsonish, jsonish, async (first, second) => {
        // A user of its own each time: the quota would otherwise answer 429 after four.
        const user = `dup-${++dupUsers}`;
        const payload = `{"user_id":${JSON.stringify(first) ?? "null"},"user_id":"${user}","text":${JSON.stringify(second) ?? "null"},"text":"dup text"}`;
        const res = await post(small, payload);
        expectContractAnswer(res);
        expect(res.statusCode).toBe(200);
      }),
      { numRuns: 50 },
    );
  });

  it("refuses __proto__ and constructor.prototype keys with 400", async () => {
    for (const payload of [
      '{"__proto__":{"user_id":"x"},"text":"hi"}',
      '{"user_id":"p","text":"hi","__proto__":{"polluted":true}}',
      '{"user_id":"p","text":"hi","constructor":{"prototype":{"polluted":true}}}',
      '{"user_id":"p","text":{"__proto__":"x"}}',
    ]) {
      const res = await post(small, payload);
      expect(res.statusCode).toBe(400);
      expectContractAnswer(res);
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  let ctUsers = 0;
  it("answers any content type and header mix with a contract status", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.constantFrom(
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=utf-16",
            "application/json; charset=latin1",
            "APPLICATION/JSON",
            "application/jsonx",
            "application/json-patch+json",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            "",
            ";",
            "application/json;;;",
          ),
          fc.string({ unit: fc.constantFrom(..."ajson/;= \t+-*".split("")) }),
        ),
        fc.oneof(fc.constant(undefined), fc.string({ maxLength: 80 })),
        fc.constantFrom(undefined, "gzip", "deflate", "br", "identity", "bogus"),
        async (contentType, traceparent, encoding) => {
          const headers: Record<string, string> = { "content-type": contentType };
          if (traceparent !== undefined) headers.traceparent = traceparent;
          if (encoding !== undefined) headers["content-encoding"] = encoding;
          const res = await post(small, `{"user_id":"ct${++ctUsers}","text":"hi"}`, headers);
          expectContractAnswer(res);
          // Found by fuzzing: both were parsed as plain UTF-8 JSON and answered 200.
          if (encoding !== undefined && encoding !== "identity") {
            expect(res.json()).toEqual({ error: "content-encoding not supported" });
          } else if (/charset=(utf-16|latin1)/i.test(contentType)) {
            expect(res.statusCode).toBe(415);
          }
        },
      ),
      { numRuns },
    );
  });
});

describe("GET /history and GET /quota under hostile query strings", () => {
  const query = fc.oneof(
    fc.string({ maxLength: 200 }).map(encodeURIComponent),
    fc.string({ unit: fc.constantFrom(..."%&=+?#;[]user_idpage_tokensz0123456789".split("")) }),
    fc
      .record({
        user_id: fc.oneof(strings, fc.array(strings, { maxLength: 3 })),
        page_size: fc.oneof(fc.string(), fc.integer().map(String), fc.constant("1e99")),
        page_token: fc.oneof(fc.string(), fc.base64String(), fc.string({ unit: "binary" })),
      })
      .map((r) => {
        const params = new URLSearchParams();
        for (const [key, value] of Object.entries(r)) {
          for (const v of Array.isArray(value) ? value : [value]) params.append(key, v);
        }
        return params.toString();
      }),
  );

  it("answers every query with 200 or 400 and a JSON body", async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom("/history", "/quota"), query, async (path, q) => {
        const res = await small.inject({ method: "GET", url: `${path}?${q}` });
        expect([200, 400], `${path}?${q} → ${res.statusCode} ${res.body}`).toContain(
          res.statusCode,
        );
        const body = res.json() as Record<string, unknown>;
        if (res.statusCode === 400) expect(typeof body.error).toBe("string");
      }),
      { numRuns },
    );
  });
});
