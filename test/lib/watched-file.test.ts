import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { fileStamp, type WatchedFile, watchFile } from "../../src/lib/watched-file.js";

// fs events are slow on a loaded machine: wait generously.
const poll = { timeout: 15_000, interval: 50 };

let dir: string;
let watched: WatchedFile | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "chatmesh-watched-"));
});
afterEach(() => {
  watched?.close();
  watched = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** Watches `path`; `contents()` is what the last read found there. */
async function watchContents(path: string) {
  let contents = readFileSync(path, "utf8");
  watched = watchFile(path, {
    stamp: await fileStamp(path),
    what: "the test file",
    notReloaded: "not reloaded",
    logger: pino({ level: "silent" }),
    async read() {
      contents = readFileSync(path, "utf8");
    },
  });
  return () => contents;
}

describe("watchFile", () => {
  it("follows every update of a Kubernetes volume whose item is in a subdirectory (the directory is a symlink replaced with it)", async () => {
    // The kubelet's layout for an item at `sub/keys`: sub → ..data/sub, ..data → a timestamped directory.
    const version = (n: number) => {
      mkdirSync(join(dir, `..2026_11_29_0${n}`, "sub"), { recursive: true });
      writeFileSync(join(dir, `..2026_11_29_0${n}`, "sub", "keys"), `version ${n}\n`);
    };
    version(1);
    symlinkSync("..2026_11_29_01", join(dir, "..data"));
    symlinkSync(join("..data", "sub"), join(dir, "sub"));
    const contents = await watchContents(join(dir, "sub", "keys"));
    expect(contents()).toBe("version 1\n");
    for (const n of [2, 3, 4]) {
      version(n);
      symlinkSync(`..2026_11_29_0${n}`, join(dir, "..data_tmp"));
      renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
      rmSync(join(dir, `..2026_11_29_0${n - 1}`), { recursive: true });
      await expect.poll(contents, poll).toBe(`version ${n}\n`);
    }
  });

  it("follows a file that the path is a symlink to, in another directory", async () => {
    mkdirSync(join(dir, "elsewhere"));
    mkdirSync(join(dir, "conf"));
    writeFileSync(join(dir, "elsewhere", "keys"), "version 1\n");
    symlinkSync(join(dir, "elsewhere", "keys"), join(dir, "conf", "keys"));
    const contents = await watchContents(join(dir, "conf", "keys"));
    // Written in place where it is: no event in the path's directory.
    writeFileSync(join(dir, "elsewhere", "keys"), "version 2\n");
    await expect.poll(contents, poll).toBe("version 2\n");
  });

  it("follows the file once its directory is deleted and made again", async () => {
    mkdirSync(join(dir, "conf"));
    writeFileSync(join(dir, "conf", "keys"), "version 1\n");
    const contents = await watchContents(join(dir, "conf", "keys"));
    rmSync(join(dir, "conf"), { recursive: true });
    mkdirSync(join(dir, "conf"));
    writeFileSync(join(dir, "conf", "keys"), "version 2\n");
    await expect.poll(contents, poll).toBe("version 2\n");
    writeFileSync(join(dir, "conf", "keys"), "version 3\n");
    await expect.poll(contents, poll).toBe("version 3\n");
  });
});
