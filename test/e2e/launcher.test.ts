import { execFile } from "node:child_process";
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { repoPath } from "../fixtures/deploy.js";

/**
 * bin/chatmesh.js in a package of its own whose dist/ and src/ each print
 * which they are, so the choice between them is seen from the outside.
 */
const run = promisify(execFile);
let pkg: string;

function launch(env: Record<string, string> = {}) {
  return run(process.execPath, [join(pkg, "bin/chatmesh.js"), "help"], {
    env: { PATH: process.env.PATH ?? "", ...env },
  }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (err: { code: number; stdout: string; stderr: string }) => err,
  );
}

beforeEach(() => {
  pkg = mkdtempSync(join(tmpdir(), "chatmesh-launcher-"));
  mkdirSync(join(pkg, "bin"));
  mkdirSync(join(pkg, "dist/src"), { recursive: true });
  mkdirSync(join(pkg, "src"));
  copyFileSync(repoPath("bin/chatmesh.js"), join(pkg, "bin/chatmesh.js"));
  writeFileSync(join(pkg, "package.json"), '{"type":"module"}\n');
  writeFileSync(join(pkg, "src/cli.ts"), 'const from: string = "sources";\nconsole.log(from);\n');
  writeFileSync(join(pkg, "dist/src/cli.js"), 'console.log("dist");\n');
  // The build is newer than the sources, as right after `npm run build`.
  const built = new Date(Date.now() - 30_000);
  const written = new Date(Date.now() - 60_000);
  utimesSync(join(pkg, "dist/src/cli.js"), built, built);
  utimesSync(join(pkg, "src/cli.ts"), written, written);
  utimesSync(join(pkg, "src"), written, written);
  symlinkSync(repoPath("node_modules"), join(pkg, "node_modules"));
});
afterEach(() => rmSync(pkg, { recursive: true, force: true }));

describe("bin/chatmesh.js", () => {
  it("runs the build when there is one, with no warning", async () => {
    expect(await launch()).toEqual({ code: 0, stdout: "dist\n", stderr: "" });
  });

  it("runs the TypeScript sources through tsx when CHATMESH_FROM_SOURCE=1", async () => {
    expect(await launch({ CHATMESH_FROM_SOURCE: "1" })).toMatchObject({
      code: 0,
      stdout: "sources\n",
    });
  });

  it("runs the sources when there is no build (a fresh clone)", async () => {
    rmSync(join(pkg, "dist"), { recursive: true });
    expect(await launch()).toMatchObject({ code: 0, stdout: "sources\n" });
  });

  it("warns, in one line, when the sources changed after the build", async () => {
    writeFileSync(join(pkg, "src/cli.ts"), 'console.log("edited");\n');
    const result = await launch();
    expect(result).toMatchObject({ code: 0, stdout: "dist\n" });
    expect(result.stderr).toMatch(/^chatmesh: dist\/ is older than src\/; [^\n]+\n$/);
  });

  it("says what to do when there is neither a build nor tsx", async () => {
    rmSync(join(pkg, "dist"), { recursive: true });
    rmSync(join(pkg, "node_modules"));
    const result = await launch();
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/dist\/ is missing and tsx .* run `npm run build`/);
  });
});
