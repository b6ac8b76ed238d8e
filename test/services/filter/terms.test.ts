import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError } from "../../../src/lib/config.js";
import { createTermMatcher, loadTerms } from "../../../src/services/filter/terms.js";

const dir = mkdtempSync(join(tmpdir(), "chatmesh-terms-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("loadTerms", () => {
  it("reads a UTF-8 file with a BOM and CRLF line ends", async () => {
    const file = join(dir, "bom.txt");
    writeFileSync(file, "\uFEFF# banned\r\nfoo\r\ncafé\r\n");
    expect(await loadTerms(file)).toEqual(["foo", "café"]);
  });

  it("refuses a file that is not valid UTF-8, naming FILTER_TERMS_FILE", async () => {
    const file = join(dir, "latin1.txt");
    writeFileSync(file, Buffer.from("caf\xe9\n", "latin1"));
    const err = await loadTerms(file).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toBe(
      `FILTER_TERMS_FILE must name a readable UTF-8 file, got "${file}" (not valid UTF-8)`,
    );
  });

  it("refuses more than 100,000 terms, or over 1 Mi characters of terms, or a file over 64 MiB", async () => {
    const file = join(dir, "many.txt");
    const terms = Array.from({ length: 100_001 }, (_, i) => `t${i}`);
    writeFileSync(file, terms.join("\n"));
    await expect(loadTerms(file)).rejects.toThrow(
      `FILTER_TERMS_FILE must hold at most 100000 terms of 1048576 characters in all, got "${file}" (100001 terms, ${terms.join("").length} characters)`,
    );
    // At the limits, and comments count for nothing.
    writeFileSync(file, `# ${"comment ".repeat(200_000)}\n${terms.slice(1).join("\n")}`);
    expect(await loadTerms(file)).toHaveLength(100_000);
    writeFileSync(file, `${"x".repeat(1_048_576)}\n`);
    expect(await loadTerms(file)).toHaveLength(1);
    writeFileSync(file, `${"x".repeat(1_048_576)}\ny\n`);
    await expect(loadTerms(file)).rejects.toThrow("(2 terms, 1048577 characters)");
    const huge = join(dir, "huge.txt");
    writeFileSync(huge, "");
    truncateSync(huge, 64 * 1_048_576 + 1);
    await expect(loadTerms(huge)).rejects.toThrow(
      `FILTER_TERMS_FILE must name a file of at most 67108864 bytes, got "${huge}" (67108865 bytes)`,
    );
  });

  it("refuses terms whose normalised forms come to over 1 Mi characters, though they are written in fewer", () => {
    // U+FDFA is one character written, 18 once NFKC has it.
    const terms = Array.from({ length: 60_000 }, (_, i) => `\ufdfa${i}`);
    expect(terms.join("").length).toBeLessThan(400_000);
    expect(() => createTermMatcher(terms)).toThrow(
      new ConfigError(
        "FILTER_TERMS_FILE must hold terms of at most 1048576 characters in all once normalised (NFKC, case-folded); they come to more",
      ),
    );
    // The same count of terms that normalise to no more is built.
    expect(createTermMatcher(terms.slice(0, 40_000)).size).toBe(40_000);
  });

  it("refuses a file that cannot be read, naming FILTER_TERMS_FILE", async () => {
    const file = join(dir, "missing.txt");
    await expect(loadTerms(file)).rejects.toThrow(
      `FILTER_TERMS_FILE must name a readable UTF-8 file, got "${file}" (ENOENT)`,
    );
  });
});
