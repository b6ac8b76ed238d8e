import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError } from "../../../src/lib/config.js";
import { loadTerms } from "../../../src/services/filter/terms.js";

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

  it("refuses a file that cannot be read, naming FILTER_TERMS_FILE", async () => {
    const file = join(dir, "missing.txt");
    await expect(loadTerms(file)).rejects.toThrow(
      `FILTER_TERMS_FILE must name a readable UTF-8 file, got "${file}" (ENOENT)`,
    );
  });
});
