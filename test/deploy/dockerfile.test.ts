import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Copy, DockerfileParser } from "dockerfile-ast";
import { ValidationSeverity, validate } from "dockerfile-utils";
import { describe, expect, it } from "vitest";
import { repoFile } from "../fixtures/deploy.js";
import { aptPackages, dockerignore, runDockerfile } from "../fixtures/dockerfile.js";

/**
 * Lints the Dockerfile without Docker: hadolint is in neither Debian nor npm,
 * so the Dockerfile language server's validator (dockerfile-utils) checks the
 * syntax, and the rules below hold the practices hadolint would.
 */
const text = repoFile("Dockerfile");
const instructions = DockerfileParser.parse(text).getInstructions();
const keyword = (k: string) => instructions.filter((i) => i.getKeyword() === k);
const ignored = dockerignore(repoFile(".dockerignore"));

describe("Dockerfile", () => {
  it("has no problem the Dockerfile validator finds, at its strictest settings", () => {
    const strict = ValidationSeverity.ERROR;
    const problems = validate(text, {
      deprecatedMaintainer: strict,
      directiveCasing: strict,
      emptyContinuationLine: strict,
      instructionCasing: strict,
      instructionCmdMultiple: strict,
      instructionEntrypointMultiple: strict,
      instructionHealthcheckMultiple: strict,
      instructionJSONInSingleQuotes: strict,
      instructionWorkdirRelative: strict,
    });
    expect(problems.map((p) => `line ${p.range.start.line + 1}: ${p.message}`)).toEqual([]);
  });

  it("pins its base images and names its stages", () => {
    for (const from of keyword("FROM")) {
      const [image, as, stage] = from.getArguments().map((a) => a.getValue());
      expect(image).toMatch(/^node:\d+[\w.-]*$/);
      expect(image).not.toMatch(/:latest$/);
      expect([as?.toUpperCase(), stage]).toEqual(["AS", expect.stringMatching(/^[a-z]+$/)]);
    }
  });

  it("uses COPY, not ADD, and exec-form ENTRYPOINT, CMD and HEALTHCHECK", () => {
    expect(keyword("ADD")).toEqual([]);
    for (const k of ["ENTRYPOINT", "CMD"]) {
      const [only, ...more] = keyword(k);
      expect(more, k).toEqual([]);
      expect(only?.getArgumentsContent()?.trim().startsWith("["), k).toBe(true);
    }
    expect(keyword("HEALTHCHECK")[0]?.getArgumentsContent()).toMatch(/^CMD \[/);
  });

  it("switches to a non-root user in the final stage before the command", () => {
    const lastFrom = instructions.lastIndexOf(keyword("FROM").at(-1) as never);
    const users = keyword("USER").filter((u) => instructions.indexOf(u) > lastFrom);
    expect(users.at(-1)?.getArgumentsContent()).not.toMatch(/^(root|0)(:|$)/);
    expect(instructions.indexOf(users.at(-1) as never)).toBeLessThan(
      instructions.indexOf(keyword("ENTRYPOINT")[0] as never),
    );
  });

  it("installs the build stage's compiler with apt-get as hadolint asks: no recommends, no lists left", () => {
    const apt = keyword("RUN")
      .map((run) => run.getArgumentsContent() ?? "")
      .filter((command) => aptPackages(command) !== undefined);
    expect(apt.map(aptPackages)).toEqual([["python3", "make", "g++"]]);
    expect(apt[0]).toMatch(/apt-get install -y --no-install-recommends /);
    expect(apt[0]).toMatch(/&& rm -rf \/var\/lib\/apt\/lists\/\*$/);
    // Only the build stage compiles; the image takes its node_modules.
    const lastFrom = instructions.lastIndexOf(keyword("FROM").at(-1) as never);
    const runtimeRuns = keyword("RUN").filter((r) => instructions.indexOf(r) > lastFrom);
    expect(runtimeRuns.map((r) => r.getArgumentsContent())).not.toContainEqual(
      expect.stringMatching(/apt-get|npm ci/),
    );
  });

  it("reads an apt-get line as its packages, another line as a command, and refuses a mix", () => {
    expect(
      aptPackages("apt-get update \\\n && apt-get install -y --no-install-recommends a b"),
    ).toEqual(["a", "b"]);
    expect(aptPackages("npm run build && npm prune --omit=dev")).toBeUndefined();
    expect(() => aptPackages("apt-get install -y a && curl -o x y")).toThrow(/split the line/);
  });

  it("runs an apt-get line outside Docker as a check that this machine has its commands", async () => {
    const out = mkdtempSync(join(tmpdir(), "chatmesh-apt-"));
    const dockerfile = join(out, "Dockerfile");
    const steps = (packages: string) =>
      `FROM node:20-slim AS build\nRUN apt-get update && apt-get install -y --no-install-recommends ${packages} && rm -rf /var/lib/apt/lists/*\n`;
    try {
      writeFileSync(dockerfile, steps("sh make"));
      await expect(runDockerfile({ context: out, out, dockerfile })).resolves.toBeDefined();
      writeFileSync(dockerfile, steps("sh no-such-tool-here"));
      await expect(runDockerfile({ context: out, out, dockerfile })).rejects.toThrow(
        "RUN apt-get install no-such-tool-here: no no-such-tool-here on this machine's PATH",
      );
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it("sends only what it copies: every COPY source is in the context, the rest is ignored", () => {
    for (const copy of keyword("COPY")) {
      if ((copy as Copy).getFromFlag() !== null) continue;
      const args = copy.getArguments().map((a) => a.getValue());
      for (const source of args.slice(0, -1)) expect(ignored(source), source).toBe(false);
    }
    for (const path of [
      "node_modules/fastify",
      "dist/src/cli.js",
      ".git/HEAD",
      "test/e2e",
      "deploy",
    ]) {
      expect(ignored(path), path).toBe(true);
    }
  });
});
