import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createConnection } from "mysql2/promise";
import { endsWithWorker, freePort } from "../fixtures/processes.js";
import { redisAnswers } from "../fixtures/redis.js";

const run = promisify(execFile);

/** A store server of the test's own, on a free port, that may be killed and started again. */
export interface OwnStore {
  readonly name: string;
  readonly url: string;
  /** Kills it with SIGKILL, as a crash, and waits until it is gone. */
  kill(): Promise<void>;
  /** Starts it again on the same port and data, and waits until it answers. */
  start(): Promise<void>;
  /** Whether it is running now. */
  alive(): boolean;
  /** Stops it and removes its data. */
  remove(): Promise<void>;
}

async function until(what: string, check: () => Promise<boolean>, child: () => ChildProcess) {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline || child().exitCode !== null)
      throw new Error(`${what} did not start`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function killer(child: () => ChildProcess) {
  return async () => {
    const c = child();
    if (c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((resolve) => c.once("exit", resolve));
    c.kill("SIGKILL");
    await gone;
  };
}

/**
 * A redis-server that writes every command to its append-only file before it
 * answers (appendfsync always), so a SIGKILL loses no acknowledged charge.
 */
export async function startDurableRedis(): Promise<OwnStore> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "chatmesh-faults-redis-"));
  const url = `redis://127.0.0.1:${port}`;
  let child: ChildProcess;
  const start = async () => {
    child = endsWithWorker(
      spawn(
        "redis-server",
        [
          "--port",
          String(port),
          "--bind",
          "127.0.0.1",
          "--dir",
          dir,
          "--save",
          "",
          "--appendonly",
          "yes",
          "--appendfsync",
          "always",
        ],
        { stdio: "ignore" },
      ),
    );
    await until(
      `redis-server on port ${port}`,
      () => redisAnswers(url),
      () => child,
    );
  };
  await start();
  const kill = killer(() => child);
  return {
    name: "redis",
    url,
    kill,
    start,
    alive: () => child.exitCode === null && child.signalCode === null,
    async remove() {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** mariadbd lives in sbin, which is not on every PATH. */
const mariadbd = ["mariadbd", "/usr/sbin/mariadbd", "/usr/local/sbin/mariadbd"].find(
  (path) => spawnSync(path, ["--version"]).status === 0,
);

/** Whether this machine can start a private MariaDB (same CI rule as the other stores). */
export function mariadbOrSkip(): boolean {
  const found =
    mariadbd !== undefined &&
    // Only looked up: run without a datadir it would set up the system's default one.
    spawnSync("sh", ["-c", "command -v mariadb-install-db"]).status === 0;
  if (found) return true;
  if (process.env.CI === "true") throw new Error("mariadbd is not installed: required in CI");
  console.warn("skipping the fault suite: mariadbd / mariadb-install-db are not installed");
  return false;
}

/**
 * A private mariadbd with its own data directory, socket and port (root with
 * no password, database `chatmesh`), durable on commit so that a SIGKILL
 * loses no acknowledged append.
 */
export async function startPrivateMariadb(): Promise<OwnStore> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "chatmesh-faults-mariadb-"));
  const datadir = join(dir, "data");
  await run("mariadb-install-db", [
    "--no-defaults",
    `--datadir=${datadir}`,
    "--user=root",
    "--auth-root-authentication-method=normal",
    "--skip-test-db",
  ]);
  let child: ChildProcess;
  const answers = async () => {
    try {
      const conn = await createConnection({
        host: "127.0.0.1",
        port,
        user: "root",
        connectTimeout: 1_000,
      });
      await conn.query("CREATE DATABASE IF NOT EXISTS chatmesh");
      await conn.end();
      return true;
    } catch {
      return false;
    }
  };
  const start = async () => {
    child = endsWithWorker(
      spawn(
        mariadbd as string,
        [
          "--no-defaults",
          `--datadir=${datadir}`,
          `--port=${port}`,
          "--bind-address=127.0.0.1",
          `--socket=${join(dir, "mariadb.sock")}`,
          `--pid-file=${join(dir, "mariadb.pid")}`,
          "--user=root",
          "--skip-log-bin",
          "--innodb-buffer-pool-size=32M",
          "--innodb-flush-log-at-trx-commit=1",
        ],
        { stdio: "ignore" },
      ),
    );
    await until(`mariadbd on port ${port}`, answers, () => child);
  };
  await start();
  const kill = killer(() => child);
  return {
    name: "mariadb",
    url: `mysql://root@127.0.0.1:${port}/chatmesh`,
    kill,
    start,
    alive: () => child.exitCode === null && child.signalCode === null,
    async remove() {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
