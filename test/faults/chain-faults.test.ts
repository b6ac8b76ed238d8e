import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  freePort,
  type ProcessName,
  type Running,
  startChatmesh,
  waitHealthy,
} from "../fixtures/processes.js";
import { waitReadyz } from "../fixtures/quota-stack.js";
import { redisServerOrSkip } from "../fixtures/redis.js";
import { type Load, type Outcome, startLoad } from "./load.js";
import {
  mariadbOrSkip,
  type OwnStore,
  startDurableRedis,
  startPrivateMariadb,
} from "./own-stores.js";

/**
 * The fault-injection suite: a steady load of chats runs through the five
 * processes (quota on a Redis and history on a MariaDB of the test's own)
 * while each process and each store in turn is killed with SIGKILL and
 * started again. Every chat must get a contract answer in time, nothing but
 * the killed process may exit, the quota must stay exact and every answered
 * chat must end up in history.
 */

const enabled = redisServerOrSkip() && mariadbOrSkip();
const concurrency = Number(process.env.FAULT_CONCURRENCY ?? 20);
const cost = 3;
// Generous deadlines: on a loaded machine a slow answer must not pass for an outage.
const timeouts = { filter: 3_000, token: 3_000, llm: 5_000, history: 3_000 };
// The slowest contract answer: filter, a token call and its one retry, the
// LLM, then a refund and its retry, each up to its deadline.
const slowestAnswerMs =
  timeouts.filter + 2 * timeouts.token + timeouts.llm + 2 * timeouts.token + 1_000;
const downMs = Number(process.env.FAULT_DOWN_MS ?? 1_500);
const steadyMs = Number(process.env.FAULT_STEADY_MS ?? 1_500);

type Service = Exclude<ProcessName, "gateway">;
type Target = Service | "redis" | "mariadb";
const portEnv: Record<ProcessName, string> = {
  token: "TOKEN_PORT",
  filter: "FILTER_PORT",
  llm: "LLM_PORT",
  history: "HISTORY_PORT",
  gateway: "GATEWAY_PORT",
};
/** The failure each target's outage may cause; history and its store cause none. */
const expectedFailure: Record<Target, string | undefined> = {
  llm: "llm failed",
  filter: "filter failed",
  token: "token failed",
  redis: "token failed",
  history: undefined,
  mariadb: undefined,
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.runIf(enabled)("the chain while each process and store is killed under load", () => {
  let redis: OwnStore;
  let mariadb: OwnStore;
  const ports = {} as Record<ProcessName, number>;
  const procs = new Map<ProcessName, Running>();
  const unexpectedExits: string[] = [];
  let env: Record<string, string>;
  let load: Load | undefined;
  const phases: { target: Target; outcomes: Outcome[] }[] = [];

  async function start(name: ProcessName) {
    const proc = startChatmesh([name], { ...env, LOG_LEVEL: "warn" });
    procs.set(name, proc);
    proc.child.once("exit", (code, signal) => {
      if (procs.get(name) === proc)
        unexpectedExits.push(`${name} (${code ?? signal})\n${proc.output()}`);
    });
    await waitHealthy(ports[name], proc, 30_000);
  }

  async function kill(target: Target) {
    if (target === "redis") return redis.kill();
    if (target === "mariadb") return mariadb.kill();
    const proc = procs.get(target) as Running;
    procs.delete(target);
    await proc.stop("SIGKILL");
  }

  async function restart(target: Target) {
    if (target === "redis") {
      await redis.start();
      await waitReadyz(ports.token, 200, 30_000);
    } else if (target === "mariadb") {
      await mariadb.start();
      await waitReadyz(ports.history, 200, 30_000);
    } else {
      await start(target);
      await waitReadyz(ports[target], 200, 30_000);
    }
  }

  beforeAll(async () => {
    [redis, mariadb] = await Promise.all([startDurableRedis(), startPrivateMariadb()]);
    for (const name of Object.keys(portEnv) as ProcessName[]) ports[name] = await freePort();
    env = {
      ...Object.fromEntries(
        Object.entries(portEnv).map(([n, v]) => [v, String(ports[n as ProcessName])]),
      ),
      ...Object.fromEntries(
        (["token", "filter", "llm", "history"] as const).map((s) => [
          `${s.toUpperCase()}_URL`,
          `http://127.0.0.1:${ports[s]}`,
        ]),
      ),
      QUOTA_STORE: "redis",
      REDIS_URL: redis.url,
      QUOTA_LIMIT: "1000000000",
      QUOTA_COST: String(cost),
      HISTORY_DATABASE_URL: mariadb.url,
      FILTER_TIMEOUT_MS: String(timeouts.filter),
      TOKEN_TIMEOUT_MS: String(timeouts.token),
      LLM_TIMEOUT_MS: String(timeouts.llm),
      HISTORY_TIMEOUT_MS: String(timeouts.history),
      HISTORY_RETRY_WINDOW_MS: "180000",
    };
    await Promise.all((["token", "filter", "llm", "history"] as const).map(start));
    await start("gateway");
  }, 120_000);

  afterAll(async () => {
    await load?.stop();
    const running = [...procs.values()];
    procs.clear();
    await Promise.all(running.map((p) => p.stop("SIGKILL")));
    await Promise.all([redis?.remove(), mariadb?.remove()]);
  });

  it("answers every chat in time, keeps the others up, the quota exact and every 200 in history", {
    timeout: 600_000,
  }, async () => {
    const gatewayUrl = `http://127.0.0.1:${ports.gateway}`;
    load = startLoad({ gatewayUrl, concurrency, paceMs: 50, deadlineMs: slowestAnswerMs + 5_000 });
    for (const target of ["llm", "filter", "token", "history", "redis", "mariadb"] as const) {
      await sleep(steadyMs);
      const from = load.outcomes.length;
      await kill(target);
      await sleep(downMs);
      await restart(target);
      await sleep(steadyMs);
      phases.push({ target, outcomes: load.outcomes.slice(from) });
      expect(unexpectedExits, `while ${target} was down`).toEqual([]);
    }
    await load.stop();
    const outcomes = load.outcomes;

    // Every chat got a contract answer in time: no reset, no hang.
    const broken = outcomes.filter((o) => o.error !== undefined);
    expect(broken.slice(0, 5), `${broken.length} chats without an answer`).toEqual([]);
    for (const o of outcomes) {
      if (o.status === 200) {
        expect(o.body).toMatchObject({ cleaned: o.text, reply: `Echo: ${o.text}` });
      } else {
        expect([o.status, o.body]).toEqual([
          500,
          { error: expect.stringMatching(/^(filter|token|llm) failed$/) },
        ]);
      }
      expect(o.ms).toBeLessThan(slowestAnswerMs);
    }
    for (const { target, outcomes: during } of phases) {
      const failures = during.filter((o) => o.status !== 200);
      const expected = expectedFailure[target];
      if (expected === undefined) {
        expect(failures.length, `failures while ${target} was down`).toBe(0);
      } else {
        expect(failures.length, `no failures while ${target} was down`).toBeGreaterThan(0);
        for (const f of failures)
          expect(f.body, `while ${target} was down`).toEqual({ error: expected });
      }
      expect(
        during.filter((o) => o.status === 200).length,
        `chats around ${target}`,
      ).toBeGreaterThan(0);
    }

    const ok = outcomes.filter((o) => o.status === 200);
    const users = [...new Set(outcomes.map((o) => o.user))];
    // The quota is exact: what each user was charged, net of refunds, is its
    // answered chats (refunds of charges whose answer was lost land within seconds).
    const counters = new Redis(redis.url, { maxRetriesPerRequest: 1 });
    const quotaOf = async (user: string) => {
      const res = await fetch(`${gatewayUrl}/quota?user_id=${user}`);
      const keys = await counters.keys(`chatmesh:quota:{${user}}:????-??-??`);
      const stored = await Promise.all(keys.map((k) => counters.get(k)));
      return {
        user,
        quotaUsed: ((await res.json()) as { used: number }).used,
        redisCounter: stored.reduce((sum, v) => sum + Number(v), 0),
        expected: ok.filter((o) => o.user === user).length * cost,
      };
    };
    try {
      let wrong: Awaited<ReturnType<typeof quotaOf>>[] = [];
      const quotaDeadline = Date.now() + 60_000;
      do {
        if (wrong.length > 0) await sleep(1_000);
        const all = await Promise.all(users.map(quotaOf));
        wrong = all.filter((q) => q.quotaUsed !== q.expected || q.redisCounter !== q.expected);
      } while (wrong.length > 0 && Date.now() < quotaDeadline);
      expect(wrong, "users whose quota is not their answered chats × cost").toEqual([]);
    } finally {
      counters.disconnect();
    }

    // Every answered chat is in history once, and no failed one is.
    const deadline = Date.now() + 120_000;
    let missing: string[] = [];
    do {
      missing = [];
      for (const user of users) {
        const stored = await listHistory(gatewayUrl, user);
        const expected = ok.filter((o) => o.user === user).map((o) => o.text);
        expect(stored.length, `duplicates in ${user}'s history`).toBe(new Set(stored).size);
        const have = new Set(stored);
        missing.push(...expected.filter((t) => !have.has(t)));
        const answered = new Set(expected);
        expect(
          stored.filter((t) => !answered.has(t)),
          `unanswered chats of ${user} in history`,
        ).toEqual([]);
      }
      if (missing.length > 0) await sleep(1_000);
    } while (missing.length > 0 && Date.now() < deadline);
    expect(missing.slice(0, 5), `${missing.length} answered chats not in history`).toEqual([]);
    expect(unexpectedExits).toEqual([]);
    console.info(
      `fault suite: ${outcomes.length} chats, ${ok.length} answered 200, ` +
        phases
          .map((p) => `${p.target}: ${p.outcomes.filter((o) => o.status !== 200).length} failed`)
          .join(", "),
    );
  });
});

async function listHistory(gatewayUrl: string, user: string): Promise<string[]> {
  const texts: string[] = [];
  let token = "";
  do {
    const res = await fetch(
      `${gatewayUrl}/history?user_id=${user}&page_size=100&page_token=${encodeURIComponent(token)}`,
    );
    const page = (await res.json()) as { items: { text: string }[]; next_page_token: string };
    texts.push(...page.items.map((i) => i.text));
    token = page.next_page_token;
  } while (token !== "");
  return texts;
}
