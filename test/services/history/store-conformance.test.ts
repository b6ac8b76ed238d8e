import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadHistoryConfig } from "../../../src/lib/config.js";
import {
  type Entry,
  HistoryInputError,
  type HistoryStore,
  type NewEntry,
  RequestIdConflictError,
} from "../../../src/services/history/history-store.js";
import { openHistoryStore } from "../../../src/services/history/open-store.js";
import {
  createMysqlDatabase,
  createSqliteDatabase,
  type TestDatabase,
} from "../../fixtures/databases.js";

const mysql = await createMysqlDatabase();
if ("skip" in mysql) console.warn(`skipping the MySQL history store tests: ${mysql.skip}`);

const open = (url: string) =>
  openHistoryStore(loadHistoryConfig({ HISTORY_DATABASE_URL: url }).database);

const base = Date.UTC(2025, 0, 15, 12, 0, 0, 0);
const entry = (userId: string, n: number, extra: Partial<NewEntry> = {}): NewEntry => ({
  userId,
  text: `text ${n}`,
  reply: `Echo: text ${n}`,
  createdAtMs: base + n,
  requestId: randomUUID(),
  ...extra,
});

/** Every page of a user's history, in order. */
async function allPages(store: HistoryStore, userId: string, pageSize: number) {
  const pages: Entry[][] = [];
  let pageToken = "";
  do {
    const page = await store.list({ userId, pageSize, pageToken });
    pages.push([...page.entries]);
    pageToken = page.nextPageToken;
  } while (pageToken !== "" && pages.length < 1_000);
  return pages;
}

const newestFirst = (a: Entry, b: Entry) =>
  b.createdAtMs - a.createdAtMs || Number(BigInt(b.id) - BigInt(a.id));

function conformance(name: string, makeDatabase: () => Promise<TestDatabase>) {
  describe(`history store on ${name}`, () => {
    let database: TestDatabase;
    let store: HistoryStore;
    beforeAll(async () => {
      database = await makeDatabase();
      store = await open(database.url);
    });
    afterAll(async () => {
      await store?.close();
      await database?.drop();
    });
    const user = () => `user-${randomUUID()}`;

    it("answers a ping", async () => {
      await expect(store.ping()).resolves.toBeUndefined();
    });

    it("returns what was appended, field for field, to the millisecond", async () => {
      const u = user();
      const input = entry(u, 123);
      const { entry: stored, created } = await store.append(input);
      expect(created).toBe(true);
      expect(stored).toEqual({ ...input, id: expect.stringMatching(/^[1-9]\d*$/) });
      const zeroMs = entry(u, 0, { createdAtMs: base + 1_000 });
      await store.append(zeroMs);
      const page = await store.list({ userId: u, pageSize: 0, pageToken: "" });
      expect(page).toEqual({
        entries: [
          { ...zeroMs, id: expect.any(String) },
          { ...input, id: stored.id },
        ],
        nextPageToken: "",
      });
    });

    it("lists newest first, by time and then by id, whatever the insertion order", async () => {
      const u = user();
      for (const n of [5, 1, 9, 3, 9, 9, 0, 7]) await store.append(entry(u, n));
      const { entries } = await store.list({ userId: u, pageSize: 100, pageToken: "" });
      expect(entries.map((e) => e.createdAtMs - base)).toEqual([9, 9, 9, 7, 5, 3, 1, 0]);
      expect([...entries].sort(newestFirst)).toEqual(entries);
      const ties = entries.slice(0, 3).map((e) => BigInt(e.id));
      expect(ties[0]).toBeGreaterThan(ties[1] as bigint);
      expect(ties[1]).toBeGreaterThan(ties[2] as bigint);
    });

    it("pages through 250 entries 20 at a time, each exactly once, while more arrive", async () => {
      const u = user();
      // Three entries share each millisecond, so pages split ties.
      const original = new Set<string>();
      for (let n = 0; n < 250; n++) {
        original.add((await store.append(entry(u, Math.floor(n / 3)))).entry.id);
      }
      let arriving = true;
      let arrived = 0;
      // Chats of the same user keep arriving, newer and (late retries) older ones.
      const writer = (async () => {
        while (arriving) {
          const n = arrived % 2 === 0 ? 10_000 + arrived : -1 - arrived;
          await store.append(entry(u, n));
          arrived++;
          await new Promise((r) => setTimeout(r, 1));
        }
      })();
      const pages: Entry[][] = [];
      let pageToken = "";
      try {
        do {
          const page = await store.list({ userId: u, pageSize: 20, pageToken });
          pages.push([...page.entries]);
          pageToken = page.nextPageToken;
          await new Promise((r) => setTimeout(r, 5));
        } while (pageToken !== "" && pages.length < 100);
      } finally {
        arriving = false;
        await writer;
      }
      expect(arrived).toBeGreaterThan(0);
      const seen = pages.flat();
      expect(new Set(seen.map((e) => e.id)).size).toBe(seen.length);
      expect(seen.filter((e) => original.has(e.id))).toHaveLength(250);
      expect([...seen].sort(newestFirst)).toEqual(seen);
      expect(pages.slice(0, -1).every((p) => p.length === 20)).toBe(true);
      expect(pages.at(-1)?.length).toBeGreaterThan(0);
    });

    it("ends a page of long chats before 3 MiB, at least one chat a page, and goes on from there", async () => {
      const u = user();
      // 12 chats of 300 KB each (3.6 MB), then one of 3.5 MB alone.
      for (let n = 0; n < 12; n++) {
        await store.append(entry(u, n, { text: "字".repeat(50_000), reply: "x".repeat(150_000) }));
      }
      await store.append(entry(u, 12, { text: "y".repeat(3_500_000), reply: "" }));
      const pages = await allPages(store, u, 100);
      expect(pages.map((p) => p.length)).toEqual([1, 10, 2]);
      expect(pages.flat().map((e) => e.createdAtMs)).toEqual(
        Array.from({ length: 13 }, (_, i) => base + 12 - i),
      );
      for (const page of pages.slice(1)) {
        const bytes = page.reduce((sum, e) => sum + Buffer.byteLength(e.text + e.reply), 0);
        expect(bytes).toBeLessThanOrEqual(3 * 1024 * 1024);
      }
    });

    it("ends with an empty next_page_token when the last page is exactly full", async () => {
      const u = user();
      for (let n = 0; n < 40; n++) await store.append(entry(u, n));
      const pages = await allPages(store, u, 20);
      expect(pages.map((p) => p.length)).toEqual([20, 20]);
      expect(await store.list({ userId: `nobody-${u}`, pageSize: 20, pageToken: "" })).toEqual({
        entries: [],
        nextPageToken: "",
      });
    });

    it("never shows one user's entries to another, whatever the spelling", async () => {
      const names = [user(), "", "", "", ""];
      names[1] = `${names[0]} `;
      names[2] = (names[0] as string).toUpperCase();
      names[3] = `${names[0]}\u0301`;
      names[4] = "x".repeat(5_000) + names[0];
      for (const [i, u] of names.entries()) {
        for (let n = 0; n < 3; n++) await store.append(entry(u as string, n, { text: `${i}` }));
      }
      for (const [i, u] of names.entries()) {
        const pages = await allPages(store, u as string, 2);
        const texts = pages.flat().map((e) => e.text);
        expect(texts).toEqual([`${i}`, `${i}`, `${i}`]);
        expect(pages.flat().every((e) => e.userId === u)).toBe(true);
      }
    });

    it("refuses another user's page token", async () => {
      const [a, b] = [user(), user()];
      for (let n = 0; n < 3; n++) {
        await store.append(entry(a, n));
        await store.append(entry(b, n));
      }
      const { nextPageToken } = await store.list({ userId: a, pageSize: 1, pageToken: "" });
      expect(nextPageToken).not.toBe("");
      await expect(
        store.list({ userId: b, pageSize: 1, pageToken: nextPageToken }),
      ).rejects.toThrow(HistoryInputError);
    });

    it("refuses garbage and tampered page tokens", async () => {
      const u = user();
      for (let n = 0; n < 3; n++) await store.append(entry(u, n));
      const { nextPageToken: good } = await store.list({ userId: u, pageSize: 1, pageToken: "" });
      const body = JSON.parse(Buffer.from(good, "base64url").toString()) as Record<string, unknown>;
      const forge = (patch: Record<string, unknown>) =>
        Buffer.from(JSON.stringify({ ...body, ...patch })).toString("base64url");
      const last = good.at(-1) === "A" ? "B" : "A";
      const bad = [
        "garbage!",
        "x",
        `${good}=`,
        `${good.slice(0, -1)}${last}`,
        good.slice(0, -4),
        "A".repeat(10_000),
        Buffer.from("not json").toString("base64url"),
        Buffer.from("[1,2]").toString("base64url"),
        forge({ v: 2 }),
        forge({ i: -1 }),
        forge({ i: 0 }),
        forge({ i: "1" }),
        forge({ t: 1.5 }),
        forge({ t: 1e17 }),
        forge({ extra: true }),
        forge({ u: "0000000000000000" }),
      ];
      for (const pageToken of bad) {
        await expect(
          store.list({ userId: u, pageSize: 1, pageToken }),
          `token ${pageToken.slice(0, 40)}`,
        ).rejects.toThrow(HistoryInputError);
      }
      expect((await store.list({ userId: u, pageSize: 1, pageToken: good })).entries).toHaveLength(
        1,
      );
    });

    it("applies the page_size bounds: 0 → 20, over 100 → 100, negative refused", async () => {
      const u = user();
      for (let n = 0; n < 120; n++) await store.append(entry(u, n));
      const size = async (pageSize: number) =>
        (await store.list({ userId: u, pageSize, pageToken: "" })).entries.length;
      expect(await size(0)).toBe(20);
      expect(await size(1)).toBe(1);
      expect(await size(37)).toBe(37);
      expect(await size(100)).toBe(100);
      expect(await size(101)).toBe(100);
      expect(await size(2 ** 31 - 1)).toBe(100);
      await expect(size(-1)).rejects.toThrow(HistoryInputError);
    });

    it("keeps any Unicode, and 8000-code-point texts, exactly", async () => {
      const u = user();
      const texts = [
        "这是一条最小链路测试",
        "👩‍👩‍👧‍👦 family, 🇺🇳 flag, 😀",
        "e\u0301 (NFD) vs \u00e9 (NFC), Å vs \u212b",
        "مرحبا بالعالم — עברית",
        "𠀋𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and \u200b zero width \ufeff",
        "tab\there, newline\nthere, trailing space ",
        "😀".repeat(8_000),
        "中".repeat(8_000),
        Array.from({ length: 8_000 }, (_, i) => String.fromCodePoint(0x1f300 + (i % 700))).join(""),
      ];
      for (const [n, text] of texts.entries()) {
        await store.append(entry(u, n, { text, reply: `Echo: ${text}` }));
      }
      const stored = (await allPages(store, u, 100)).flat().reverse();
      expect(stored.map((e) => e.text)).toEqual(texts);
      expect(stored.map((e) => e.reply)).toEqual(texts.map((t) => `Echo: ${t}`));
      expect([...(stored.at(-1)?.text ?? "")]).toHaveLength(8_000);
    });

    it("stores a request id once, however often and concurrently it is appended", async () => {
      const u = user();
      const requestId = randomUUID();
      const first = await store.append(entry(u, 1, { requestId }));
      const again = await store.append(entry(u, 2, { requestId, text: "changed" }));
      expect(again).toEqual({ entry: first.entry, created: false });
      const racing = randomUUID();
      const results = await Promise.all(
        Array.from({ length: 10 }, () => store.append(entry(u, 3, { requestId: racing }))),
      );
      expect(results.filter((r) => r.created)).toHaveLength(1);
      expect(new Set(results.map((r) => r.entry.id)).size).toBe(1);
      const { entries } = await store.list({ userId: u, pageSize: 100, pageToken: "" });
      expect(entries.map((e) => e.requestId).sort()).toEqual([requestId, racing].sort());
    });

    it("stores entries without a request id every time", async () => {
      const u = user();
      await store.append(entry(u, 1, { requestId: "" }));
      await store.append(entry(u, 1, { requestId: "" }));
      const { entries } = await store.list({ userId: u, pageSize: 10, pageToken: "" });
      expect(entries.map((e) => e.requestId)).toEqual(["", ""]);
    });

    it("refuses a request id stored for another user, a too long one, and times out of range", async () => {
      const requestId = randomUUID();
      await store.append(entry(user(), 1, { requestId }));
      await expect(store.append(entry(user(), 1, { requestId }))).rejects.toThrow(
        RequestIdConflictError,
      );
      await expect(store.append(entry(user(), 1, { requestId: "r".repeat(129) }))).rejects.toThrow(
        HistoryInputError,
      );
      await expect(store.append(entry(user(), 0, { createdAtMs: -1 }))).rejects.toThrow(
        HistoryInputError,
      );
      await expect(
        store.append(entry(user(), 0, { createdAtMs: Date.UTC(10_000, 0, 1) })),
      ).rejects.toThrow(HistoryInputError);
      const longest = await store.append(entry(user(), 1, { requestId: "r".repeat(128) }));
      expect(longest.entry.requestId).toBe("r".repeat(128));
    });

    it("refuses a request id ending with a space, which MySQL's index takes for the id without it", async () => {
      const u = user();
      const requestId = randomUUID();
      await store.append(entry(u, 1, { requestId }));
      for (const spaced of [`${requestId} `, `${randomUUID()}  `]) {
        await expect(store.append(entry(u, 2, { requestId: spaced }))).rejects.toThrow(
          new HistoryInputError("request_id ends with a space"),
        );
      }
      // A space inside, or a tab at the end, is the id's own.
      const inside = await store.append(entry(u, 3, { requestId: `${requestId} x` }));
      const tab = await store.append(entry(u, 4, { requestId: `${requestId}\t` }));
      expect([inside.created, tab.created]).toEqual([true, true]);
    });

    /**
     * Makes the database fail inserts of `text` until the returned function is
     * called: "refuse" as one row's bad data (a constraint), "break" as a
     * failure of the statement that is not about the row.
     */
    async function failInserts(text: string, how: "refuse" | "break") {
      const name = `fail_${how}`;
      const sqlite = {
        refuse: "SELECT RAISE(ABORT, 'refused by the test')",
        // A run-time error, not a constraint.
        break: "SELECT abs(-9223372036854775808)",
      };
      const mysqlState = { refuse: "23000", break: "45000" };
      await database.execute(
        database.dialect === "sqlite"
          ? `CREATE TRIGGER ${name} BEFORE INSERT ON history_entries WHEN NEW.text = '${text}' BEGIN ${sqlite[how]}; END`
          : `CREATE TRIGGER ${name} BEFORE INSERT ON history_entries FOR EACH ROW BEGIN IF NEW.text = '${text}' THEN SIGNAL SQLSTATE '${mysqlState[how]}' SET MESSAGE_TEXT = 'failed by the test'; END IF; END`,
      );
      return () => database.execute(`DROP TRIGGER ${name}`);
    }

    const isStoreRefusal = (reason: unknown) =>
      reason instanceof HistoryInputError || reason instanceof RequestIdConflictError;

    it("stores 200 concurrent appends of several users, each under its own id", async () => {
      const users = [user(), user(), user(), user(), user()];
      const inputs = Array.from({ length: 200 }, (_, n) =>
        entry(users[n % users.length] as string, n),
      );
      const results = await Promise.all(inputs.map((input) => store.append(input)));
      expect(results.every((r) => r.created)).toBe(true);
      expect(results.map((r) => r.entry)).toEqual(
        inputs.map((input) => ({ ...input, id: expect.stringMatching(/^[1-9]\d*$/) })),
      );
      expect(new Set(results.map((r) => r.entry.id)).size).toBe(200);
      for (const u of users) {
        const listed = (await allPages(store, u, 100)).flat();
        const appended = results.map((r) => r.entry).filter((e) => e.userId === u);
        expect(listed).toHaveLength(40);
        expect([...listed].sort(newestFirst)).toEqual([...appended].sort(newestFirst));
      }
    });

    it("answers each append of a batch on its own: new, retried, and another user's request ids", async () => {
      const [u, v] = [user(), user()];
      const storedOfU = (await store.append(entry(u, 1))).entry;
      const storedOfV = (await store.append(entry(v, 2))).entry;
      const [twice, contested] = [randomUUID(), randomUUID()];
      const appends = [
        entry(u, 10),
        entry(u, 11, { requestId: storedOfU.requestId, text: "retried" }),
        entry(v, 12, { requestId: storedOfU.requestId }),
        entry(u, 13),
        entry(u, 14, { requestId: twice }),
        entry(u, 15, { requestId: twice, text: "second" }),
        entry(v, 16, { requestId: storedOfV.requestId }),
        entry(u, 17, { requestId: contested }),
        entry(v, 18, { requestId: contested }),
        entry(v, 19),
        entry(u, 20, { requestId: "" }),
        entry(u, 21, { requestId: "" }),
      ];
      const outcomes = await Promise.allSettled(appends.map((e) => store.append(e)));
      const value = (i: number) => {
        const outcome = outcomes[i];
        if (outcome?.status !== "fulfilled") {
          throw new Error(`append ${i} failed: ${outcome?.reason}`);
        }
        return outcome.value;
      };
      const created = [0, 3, 4, 7, 9, 10, 11];
      for (const i of created) {
        expect(value(i), `append ${i}`).toEqual({
          entry: { ...appends[i], id: expect.any(String) },
          created: true,
        });
      }
      expect(value(1)).toEqual({ entry: storedOfU, created: false });
      expect(value(5)).toEqual({ entry: value(4).entry, created: false });
      expect(value(6)).toEqual({ entry: storedOfV, created: false });
      for (const i of [2, 8]) {
        expect(outcomes[i], `append ${i}`).toMatchObject({ status: "rejected" });
        expect((outcomes[i] as PromiseRejectedResult).reason).toBeInstanceOf(
          RequestIdConflictError,
        );
      }
      const ids = created.map((i) => value(i).entry.id);
      expect(new Set([...ids, storedOfU.id, storedOfV.id]).size).toBe(9);
      const listedU = (await allPages(store, u, 100)).flat();
      expect(listedU.map((e) => e.text).sort()).toEqual(
        ["text 1", "text 10", "text 13", "text 14", "text 17", "text 20", "text 21"].sort(),
      );
      const listedV = (await allPages(store, v, 100)).flat();
      expect(listedV.map((e) => e.text).sort()).toEqual(["text 19", "text 2"].sort());
    });

    it("fails an append with bad input alone; the others of its batch are stored", async () => {
      const u = user();
      const appends = [
        entry(u, 1),
        entry(u, 2, { createdAtMs: -1 }),
        entry(u, 3),
        entry(u, 4, { requestId: "r".repeat(129) }),
        entry(u, 5),
      ];
      const outcomes = await Promise.allSettled(appends.map((e) => store.append(e)));
      expect(outcomes.map((o) => o.status)).toEqual([
        "fulfilled",
        "rejected",
        "fulfilled",
        "rejected",
        "fulfilled",
      ]);
      for (const i of [1, 3]) {
        expect((outcomes[i] as PromiseRejectedResult).reason).toBeInstanceOf(HistoryInputError);
      }
      const listed = (await allPages(store, u, 100)).flat();
      expect(listed.map((e) => e.text)).toEqual(["text 5", "text 3", "text 1"]);
    });

    it("fails a row the database refuses alone; the rest of its batch commits", async () => {
      const u = user();
      const restore = await failInserts("refused", "refuse");
      let outcomes: PromiseSettledResult<unknown>[];
      try {
        const appends = Array.from({ length: 12 }, (_, n) =>
          entry(u, n, n === 0 || n === 6 ? { text: "refused" } : {}),
        );
        outcomes = await Promise.allSettled(appends.map((e) => store.append(e)));
      } finally {
        await restore();
      }
      const refused = outcomes.flatMap((o, n) => (o.status === "rejected" ? [n] : []));
      expect(refused).toEqual([0, 6]);
      for (const n of refused) {
        expect(isStoreRefusal((outcomes[n] as PromiseRejectedResult).reason)).toBe(false);
      }
      const reopened = await open(database.url);
      try {
        const listed = (await allPages(reopened, u, 100)).flat();
        expect(listed).toHaveLength(10);
        expect(listed.some((e) => e.text === "refused")).toBe(false);
      } finally {
        await reopened.close();
      }
    });

    // Batches with request ids go in as one statement, those without row by row.
    for (const requestIds of ["with", "without"]) {
      it(`fails a whole batch ${requestIds} request ids on a database failure, storing none of it`, async () => {
        const u = user();
        const extra = requestIds === "with" ? {} : { requestId: "" };
        const restore = await failInserts("breaks", "break");
        let outcomes: PromiseSettledResult<unknown>[];
        try {
          const appends = Array.from({ length: 8 }, (_, n) =>
            entry(u, n, n === 5 ? { ...extra, text: "breaks" } : extra),
          );
          outcomes = await Promise.allSettled(appends.map((e) => store.append(e)));
        } finally {
          await restore();
        }
        expect(outcomes.map((o) => o.status)).toEqual(Array(8).fill("rejected"));
        expect(outcomes.some((o) => isStoreRefusal((o as PromiseRejectedResult).reason))).toBe(
          false,
        );
        expect(await store.list({ userId: u, pageSize: 100, pageToken: "" })).toEqual({
          entries: [],
          nextPageToken: "",
        });
        const after = await store.append(entry(u, 9, extra));
        expect(after.created).toBe(true);
        expect((await allPages(store, u, 100)).flat()).toEqual([after.entry]);
      });
    }

    it("stores a batch larger than MySQL's max_allowed_packet, every entry under its own id", async () => {
      const u = user();
      // 18 MB in all: over the 16 MiB MariaDB allows a statement by default.
      const inputs = Array.from({ length: 6 }, (_, n) =>
        entry(u, n, { text: `${n}`.repeat(3_000_000), reply: `reply ${n}` }),
      );
      const results = await Promise.all(inputs.map((input) => store.append(input)));
      expect(results.map((r) => r.entry)).toEqual(
        inputs.map((input) => ({ ...input, id: expect.any(String) })),
      );
      const listed = (await allPages(store, u, 100)).flat();
      expect([...listed].sort(newestFirst)).toEqual(results.map((r) => r.entry).sort(newestFirst));
    });

    it("writes every append still in flight before close() resolves", async () => {
      const u = user();
      const closing = await open(database.url);
      const inputs = Array.from({ length: 100 }, (_, n) => entry(u, n));
      const appends = inputs.map((input) => closing.append(input));
      await closing.close();
      const results = await Promise.all(appends);
      expect(results.every((r) => r.created)).toBe(true);
      const listed = (await allPages(store, u, 100)).flat();
      expect([...listed].sort(newestFirst)).toEqual(results.map((r) => r.entry).sort(newestFirst));
    });

    it("keeps everything across a reopen, and migrating again changes nothing", async () => {
      const u = user();
      const stored = (await store.append(entry(u, 1))).entry;
      const reopened = await open(database.url);
      try {
        expect((await reopened.list({ userId: u, pageSize: 1, pageToken: "" })).entries).toEqual([
          stored,
        ]);
      } finally {
        await reopened.close();
      }
    });
  });
}

conformance("SQLite", createSqliteDatabase);
if ("skip" in mysql) {
  describe.skip(`history store on MariaDB (${mysql.skip})`, () => {
    it("runs the conformance suite", () => {});
  });
} else {
  conformance("MariaDB", async () => mysql);

  describe("history stores of two replicas on one MariaDB", () => {
    it("store the same entries, appended through both at once in opposite orders, once each: a deadlock is retried", async () => {
      // A database of its own: the suite above drops its one when done.
      const own = await createMysqlDatabase();
      if ("skip" in own) throw new Error(own.skip);
      const [a, b] = await Promise.all([open(own.url), open(own.url)]);
      try {
        const u = `two-replicas-${randomUUID()}`;
        for (let round = 0; round < 10; round++) {
          const inputs = Array.from({ length: 40 }, (_, n) => entry(u, round * 100 + n));
          // Each store commits what arrives together in one transaction; the
          // two lock the same unique keys in opposite orders.
          const results = await Promise.allSettled([
            ...inputs.map((input) => a.append(input)),
            ...inputs.toReversed().map((input) => b.append(input)),
          ]);
          expect(results.filter((r) => r.status === "rejected")).toEqual([]);
          const created = results.filter((r) => r.status === "fulfilled" && r.value.created);
          expect(created).toHaveLength(inputs.length);
        }
        expect((await allPages(a, u, 100)).flat()).toHaveLength(400);
      } finally {
        await Promise.all([a.close(), b.close()]);
        await own.drop();
      }
    }, 60_000);
  });
}
