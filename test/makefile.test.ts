import { execFile } from "node:child_process";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { packageRoot } from "../src/lib/package-root.js";

const run = promisify(execFile);

describe("make client TEXT=…", () => {
  // A `node` first on PATH that prints the arguments it was given: what the
  // seed's client would get, with no service to reach.
  let stubDir: string;
  beforeAll(async () => {
    stubDir = await mkdtemp(join(tmpdir(), "chatmesh-make-"));
    const stub = join(stubDir, "node");
    await writeFile(
      stub,
      `#!${process.execPath}\nconsole.log(JSON.stringify(process.argv.slice(2)));\n`,
    );
    await chmod(stub, 0o755);
  });
  afterAll(() => rm(stubDir, { recursive: true, force: true }));

  /** This environment without what would set TEXT or flags of an outer make (`make test`). */
  const makeEnv = () => {
    const {
      TEXT: _text,
      MAKEFLAGS: _flags,
      MFLAGS: _mflags,
      MAKELEVEL: _level,
      ...env
    } = process.env;
    return { ...env, PATH: `${stubDir}:${process.env.PATH}` };
  };

  /** The arguments `make client` runs the client with; the install step is taken as done. */
  const clientArgs = async (...makeArgs: string[]): Promise<string[]> => {
    const { stdout } = await run(
      "make",
      ["-s", "-o", "node_modules/.chatmesh-installed", "client", ...makeArgs],
      { cwd: packageRoot(), env: makeEnv() },
    );
    return JSON.parse(stdout);
  };

  it("runs the client with the seed's text by default", async () => {
    expect(await clientArgs()).toEqual(["bin/chatmesh.js", "client", "这是一条最小链路测试"]);
  });

  it.each([
    'say "hi" to me',
    "it's",
    "costs $HOME and $$5",
    "run `date` or $(date)",
    "50% off #1 \\n",
  ])("passes %j to the client as it was typed", async (text) => {
    expect(await clientArgs(`TEXT=${text}`)).toEqual(["bin/chatmesh.js", "client", text]);
  });
});
