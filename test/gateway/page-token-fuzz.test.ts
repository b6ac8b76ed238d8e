import { createHash } from "node:crypto";
import fc from "fast-check";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { buildGateway } from "../../src/gateway/app.js";
import { loadGatewayConfig } from "../../src/lib/config.js";
import { createLogger } from "../../src/lib/logger.js";
import { HistoryInputError } from "../../src/services/history/history-store.js";
import { decodePageToken, encodePageToken } from "../../src/services/history/page-token.js";
import { createInProcessUpstreams, createMemoryHistoryStore } from "../fixtures/upstreams.js";

/**
 * Property-based tests of history page tokens, through the gateway and the
 * real history service and SQLite store: a token that was forged, tampered
 * with or issued to someone else is a 400, and no token ever shows another
 * user's chats.
 */

const numRuns = Number(process.env.FUZZ_RUNS ?? 200);
const store = createMemoryHistoryStore();
let app: FastifyInstance;
/** A real next_page_token of each user. */
const issued: Record<"alice" | "bob", string> = { alice: "", bob: "" };

const userKey = (user: string) => createHash("sha256").update(user).digest("hex");
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

const history = (user: string, token: string) =>
  app.inject({
    method: "GET",
    url: `/history?user_id=${encodeURIComponent(user)}&page_size=3&page_token=${encodeURIComponent(token)}`,
  });

beforeAll(async () => {
  app = await buildGateway({
    // A quota big enough for the chats below.
    config: loadGatewayConfig({}),
    logger: createLogger("gateway", "silent"),
    upstreams: createInProcessUpstreams({ history: store }),
  });
  // Four chats each (the quota of a day), so that pages of 3 have a next one.
  for (let i = 0; i < 4; i++) {
    for (const user of ["alice", "bob"]) {
      const res = await app.inject({
        method: "POST",
        url: "/chat",
        payload: { user_id: user, text: `${user} says ${i}` },
      });
      expect(res.statusCode).toBe(200);
    }
  }
  for (const user of ["alice", "bob"] as const) {
    await vi.waitFor(async () => {
      const page = (await history(user, "")).json();
      expect(page.items).toHaveLength(3);
      issued[user] = page.next_page_token;
      expect(issued[user]).not.toBe("");
    });
  }
});
afterAll(async () => {
  await app?.close();
  await store.close();
});

/** Every way to spoil a real token: one character changed, cut, grown, re-padded. */
const tampered = (token: string) =>
  fc
    .oneof(
      fc
        .tuple(fc.nat({ max: token.length - 1 }), fc.constantFrom(..."AZaz09-_+/=.%"))
        .map(([at, c]) => token.slice(0, at) + c + token.slice(at + 1)),
      fc.nat({ max: token.length - 1 }).map((n) => token.slice(0, n)),
      fc.string({ minLength: 1, maxLength: 8 }).map((extra) => token + extra),
      fc.constant(`${token}==`),
      fc.constant(Buffer.from(token, "base64url").toString("base64")),
    )
    .filter((t) => t !== token);

/** Tokens of the right shape with wrong or hostile fields. */
const forged = fc.oneof(
  fc.jsonValue().map(b64),
  fc
    .record(
      {
        v: fc.oneof(fc.constant(1), fc.jsonValue()),
        u: fc.oneof(
          fc.constant(userKey("alice").slice(0, 16)),
          fc.constant(userKey("bob").slice(0, 16)),
          fc.string(),
        ),
        t: fc.oneof(fc.integer(), fc.double(), fc.constant(Date.now()), fc.jsonValue()),
        i: fc.oneof(fc.integer(), fc.constant(1e300), fc.constant(-1), fc.jsonValue()),
        extra: fc.jsonValue(),
      },
      { requiredKeys: [] },
    )
    .map(b64),
  fc.string({ maxLength: 300 }),
  fc.string({ unit: "binary", maxLength: 40 }),
);

describe("history page tokens", () => {
  it("never show another user's chats, whatever the token", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(forged, tampered(issued.alice), tampered(issued.bob), fc.constant(issued.bob)),
        async (token) => {
          const res = await history("alice", token);
          expect([200, 400], res.body).toContain(res.statusCode);
          const body = res.json();
          if (res.statusCode === 400) {
            expect(body).toEqual({ error: "invalid page_token" });
          } else {
            for (const item of body.items) expect(item.text).toMatch(/^alice says/);
          }
        },
      ),
      { numRuns },
    );
  });

  it("refuse another user's token, and any change to the encoding, with 400", async () => {
    expect((await history("alice", issued.bob)).json()).toEqual({ error: "invalid page_token" });
    expect((await history("bob", issued.alice)).statusCode).toBe(400);
    // The real token goes on to the last page of alice's own chats.
    const next = await history("alice", issued.alice);
    expect(next.statusCode).toBe(200);
    expect(next.json().items.map((i: { text: string }) => i.text)).toEqual(["alice says 0"]);
    await fc.assert(
      fc.asyncProperty(
        fc
          .oneof(
            fc.constant(`${issued.alice}==`),
            fc.constant(Buffer.from(issued.alice, "base64url").toString("base64")),
            fc.string({ minLength: 1, maxLength: 8 }).map((extra) => `${issued.alice}.${extra}`),
            fc
              .integer({ min: 1, max: issued.alice.length - 2 })
              .map((n) => issued.alice.slice(0, n)),
          )
          .filter((token) => token !== issued.alice),
        async (token) => {
          expect((await history("alice", token)).statusCode).toBe(400);
        },
      ),
      { numRuns: 50 },
    );
  });

  it("decode only what encode made for the same user; anything else is a HistoryInputError", () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 1 }),
        fc.string({ minLength: 1 }),
        fc.record({
          createdAtMs: fc.integer({ min: 0, max: Date.UTC(9999, 11, 31) }),
          id: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
        }),
        fc.oneof(forged, fc.string()),
        (user, other, cursor, junk) => {
          const token = encodePageToken(userKey(user), cursor);
          expect(decodePageToken(userKey(user), token)).toEqual(cursor);
          if (userKey(user).slice(0, 16) !== userKey(other).slice(0, 16)) {
            expect(() => decodePageToken(userKey(other), token)).toThrow(HistoryInputError);
          }
          try {
            const decoded = decodePageToken(userKey(user), junk);
            expect(Number.isSafeInteger(decoded.createdAtMs) && decoded.id > 0).toBe(true);
          } catch (err) {
            expect(err).toBeInstanceOf(HistoryInputError);
          }
        },
      ),
      { numRuns },
    );
  });
});
