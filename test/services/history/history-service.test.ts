import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
  createRouterTransport,
} from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HistoryService } from "../../../gen/chat/v1/history_pb.js";
import { loadHistoryConfig } from "../../../src/lib/config.js";
import { ExpiredWaitingError } from "../../../src/services/history/group-commit.js";
import { createHistoryService } from "../../../src/services/history/history-service.js";
import type { HistoryStore } from "../../../src/services/history/history-store.js";
import { openHistoryStore } from "../../../src/services/history/open-store.js";
import { createSqliteDatabase, type TestDatabase } from "../../fixtures/databases.js";
import { createMemoryLogger } from "../../fixtures/logs.js";

const now = new Date(Date.UTC(2025, 5, 1, 8, 30, 0, 250));
let database: TestDatabase;
let store: HistoryStore;
let client: Client<typeof HistoryService>;

beforeAll(async () => {
  database = await createSqliteDatabase();
  store = await openHistoryStore(
    loadHistoryConfig({ HISTORY_DATABASE_URL: database.url }).database,
  );
  const transport = createRouterTransport((router) =>
    router.service(HistoryService, createHistoryService({ store, now: () => now })),
  );
  client = createClient(HistoryService, transport);
});
afterAll(async () => {
  await store?.close();
  await database?.drop();
});

async function codeOf(call: Promise<unknown>): Promise<Code | undefined> {
  try {
    await call;
    return undefined;
  } catch (err) {
    return ConnectError.from(err).code;
  }
}

describe("chat.v1.HistoryService over the router transport", () => {
  it("appends and lists, newest first, with the time kept to the millisecond", async () => {
    const at = timestampFromMs(Date.UTC(2025, 0, 1, 0, 0, 0, 123));
    at.nanos += 999_999; // finer than a millisecond: dropped
    const first = await client.append({
      userId: "s1",
      text: "hi",
      reply: "Echo: hi",
      createdAt: at,
      requestId: "req-1",
    });
    expect(first.created).toBe(true);
    expect(first.entry).toMatchObject({ userId: "s1", text: "hi", reply: "Echo: hi" });
    expect(first.entry?.createdAt).toMatchObject({ nanos: 123_000_000 });
    const second = await client.append({ userId: "s1", text: "now", reply: "r" });
    expect(Number(second.entry?.createdAt?.seconds) * 1000 + 250).toBe(now.getTime());

    const page = await client.list({ userId: "s1", pageSize: 1 });
    expect(page.entries.map((e) => e.text)).toEqual(["now"]);
    const next = await client.list({ userId: "s1", pageSize: 1, pageToken: page.nextPageToken });
    expect(next.entries.map((e) => e.id)).toEqual([first.entry?.id]);
    expect(next.entries[0]?.requestId).toBe("req-1");
    expect(next.nextPageToken).toBe("");
  });

  it("is idempotent on request_id", async () => {
    const req = { userId: "s2", text: "once", reply: "r", requestId: "req-2" };
    const a = await client.append(req);
    const b = await client.append({ ...req, text: "twice" });
    expect(b).toMatchObject({ created: false, entry: { id: a.entry?.id, text: "once" } });
    expect((await client.list({ userId: "s2" })).entries).toHaveLength(1);
  });

  it.each([
    ["Append without user_id", () => client.append({ text: "x" }), Code.InvalidArgument],
    ["List without user_id", () => client.list({}), Code.InvalidArgument],
    [
      "Append with a user_id over 256 characters",
      () => client.append({ userId: "x".repeat(257), text: "x" }),
      Code.InvalidArgument,
    ],
    [
      "List with a user_id over 256 characters",
      () => client.list({ userId: "x".repeat(257) }),
      Code.InvalidArgument,
    ],
    [
      "a negative page_size",
      () => client.list({ userId: "s1", pageSize: -1 }),
      Code.InvalidArgument,
    ],
    [
      "a garbage page_token",
      () => client.list({ userId: "s1", pageToken: "garbage" }),
      Code.InvalidArgument,
    ],
    [
      "a request_id of another user",
      () => client.append({ userId: "someone else", requestId: "req-2" }),
      Code.AlreadyExists,
    ],
    [
      "a time before 1970",
      () => client.append({ userId: "s1", createdAt: timestampFromMs(-1) }),
      Code.InvalidArgument,
    ],
  ])("refuses %s with its code", async (_case, call, code) => {
    expect(await codeOf(call())).toBe(code);
  });

  it("fails with INTERNAL, saying nothing of the database, when the store fails", async () => {
    const broken = await openHistoryStore(
      loadHistoryConfig({ HISTORY_DATABASE_URL: database.url }).database,
    );
    await broken.close();
    const { logger, lines } = createMemoryLogger();
    const brokenClient = createClient(
      HistoryService,
      createRouterTransport((router) =>
        router.service(HistoryService, createHistoryService({ store: broken, logger })),
      ),
    );
    const err = await brokenClient
      .list({ userId: "s1" })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.Internal);
    expect((err as ConnectError).rawMessage).toBe("history store failed");
    // The log says what the caller is not told; a batch's one failure once.
    const { results } = await brokenClient.appendBatch({
      entries: ["a", "b", "c"].map((text) => ({ userId: "s1", text, reply: "r", requestId: text })),
    });
    expect(results.map((r) => r.result.case)).toEqual(["error", "error", "error"]);
    expect(lines.filter((l) => l.msg === "history store failed")).toMatchObject([
      { level: 50, err: { message: expect.stringContaining("destroyed") } },
      { level: 50, err: { message: expect.stringContaining("destroyed") } },
    ]);
  });

  it("gives the store each append's deadline, and answers DEADLINE_EXCEEDED for those it let expire, logged once", async () => {
    const deadlines: (number | undefined)[] = [];
    const expired = new ExpiredWaitingError(3);
    const stalled: HistoryStore = {
      ...store,
      append: (_entry, deadline) => {
        deadlines.push(deadline);
        return Promise.reject(expired);
      },
    };
    const { logger, lines } = createMemoryLogger();
    const stalledClient = createClient(
      HistoryService,
      createRouterTransport((router) =>
        router.service(HistoryService, createHistoryService({ store: stalled, logger })),
      ),
    );
    const calledAt = performance.now();
    const { results } = await stalledClient.appendBatch(
      {
        entries: ["a", "b", "c"].map((text) => ({
          userId: "d1",
          text,
          reply: "r",
          requestId: text,
        })),
      },
      { timeoutMs: 2_000 },
    );
    expect(results.map((r) => r.result.value)).toMatchObject([
      { code: Code.DeadlineExceeded },
      { code: Code.DeadlineExceeded },
      { code: Code.DeadlineExceeded },
    ]);
    expect(deadlines).toHaveLength(3);
    for (const deadline of deadlines) {
      expect(deadline).toBeGreaterThan(calledAt + 1_500);
      expect(deadline).toBeLessThanOrEqual(performance.now() + 2_000);
    }
    expect(lines.filter((l) => Number(l.level) >= 40)).toMatchObject([
      {
        level: 40,
        dropped: 3,
        msg: "appends not written: their deadlines passed while they waited for the database",
      },
    ]);
    expect(await codeOf(stalledClient.append({ userId: "d1", text: "d", reply: "r" }))).toBe(
      Code.DeadlineExceeded,
    );
    // A call without a deadline gives none.
    expect(deadlines.at(-1)).toBeUndefined();
  });

  it("appends a batch entry by entry: results in order, one refusal affecting no other", async () => {
    const stored = await client.append({ userId: "b1", text: "t", reply: "r", requestId: "b-old" });
    const { results } = await client.appendBatch({
      entries: [
        { userId: "b1", text: "one", reply: "r1", requestId: "b-1" },
        { userId: "", text: "no user", reply: "r" },
        { userId: "b1", text: "retry", reply: "r", requestId: "b-old" },
        { userId: "b2", text: "not yours", reply: "r", requestId: "b-old" },
        { userId: "b2", text: "two", reply: "r2", requestId: "b-2" },
      ],
    });
    expect(results.map((r) => r.result.case)).toEqual([
      "appended",
      "error",
      "appended",
      "error",
      "appended",
    ]);
    const [one, noUser, retry, notYours, two] = results.map((r) => r.result.value);
    expect(one).toMatchObject({ created: true, entry: { text: "one", requestId: "b-1" } });
    expect(noUser).toMatchObject({ code: Code.InvalidArgument, message: "user_id is required" });
    expect(retry).toMatchObject({ created: false, entry: { id: stored.entry?.id } });
    expect(notYours).toMatchObject({ code: Code.AlreadyExists });
    expect(two).toMatchObject({ created: true, entry: { userId: "b2", text: "two" } });
    const listed = await client.list({ userId: "b1" });
    expect(listed.entries.map((e) => e.text)).toEqual(expect.arrayContaining(["one", "t"]));
    expect(listed.entries).toHaveLength(2);
  });

  it("answers a batch with omit_entries with what became of each entry, and no entries", async () => {
    await client.append({ userId: "o1", text: "t", reply: "r", requestId: "o-old" });
    const { results } = await client.appendBatch({
      omitEntries: true,
      entries: [
        { userId: "o1", text: "one", reply: "r1", requestId: "o-1" },
        { userId: "", text: "no user", reply: "r" },
        { userId: "o1", text: "retry", reply: "r", requestId: "o-old" },
      ],
    });
    const [one, noUser, retry] = results.map((r) => r.result);
    expect(one?.case === "appended" && one.value).toMatchObject({ created: true });
    expect(retry?.case === "appended" && retry.value).toMatchObject({ created: false });
    for (const appended of [one, retry]) {
      expect(appended?.case === "appended" && appended.value.entry).toBeUndefined();
    }
    expect(noUser?.case === "error" && noUser.value).toMatchObject({
      code: Code.InvalidArgument,
      message: "user_id is required",
    });
    const listed = await client.list({ userId: "o1" });
    expect(listed.entries.map((e) => e.text)).toEqual(["one", "t"]);
  });

  it("refuses a batch of more than 1000 entries as a whole", async () => {
    const entries = Array.from({ length: 1001 }, (_, i) => ({
      userId: "big",
      text: `${i}`,
      reply: "r",
    }));
    expect(await codeOf(client.appendBatch({ entries }))).toBe(Code.InvalidArgument);
    expect((await client.list({ userId: "big" })).entries).toHaveLength(0);
  });
});
