import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../../src/lib/config.js";
import { readTlsCredentials, readUpstreamCa } from "../../src/lib/tls.js";
import {
  makeTestCertificates,
  opensslOrSkip,
  type TestCertificates,
  writeBrokenTlsFiles,
} from "../fixtures/tls.js";

describe.runIf(opensslOrSkip())("TLS files", () => {
  let certs: TestCertificates;
  const at = (name: string) => join(certs.dir, name);
  beforeAll(async () => {
    certs = await makeTestCertificates();
    writeBrokenTlsFiles(certs.dir);
    // A CA bundle: the CA, then a certificate whose body is cut short.
    const ca = readFileSync(certs.caFile, "utf8");
    writeFileSync(at("bundle.pem"), `${ca}${ca.replace(/\n[^\n]+\n-----END/, "\n-----END")}`);
  });
  afterAll(() => {
    if (certs !== undefined) rmSync(certs.dir, { recursive: true, force: true });
  });

  it("reads a certificate and its key", async () => {
    const read = await readTlsCredentials({ certFile: certs.certFile, keyFile: certs.keyFile });
    expect(read?.cert.toString()).toContain("-----BEGIN CERTIFICATE-----");
    expect(read?.key.toString()).toContain("PRIVATE KEY-----");
  });

  it.each([
    [
      "a key that is not the certificate's",
      () => ({ certFile: certs.certFile, keyFile: at("other-key.pem") }),
      /^TLS_CERT_FILE and TLS_KEY_FILE must be a PEM certificate and its private key: key values mismatch$/,
    ],
    [
      "the certificate and key swapped",
      () => ({ certFile: certs.keyFile, keyFile: certs.certFile }),
      /^TLS_CERT_FILE must name a PEM certificate, got ".*key\.pem" \(it holds PRIVATE KEY where CERTIFICATE is expected\)$/,
    ],
    [
      "a certificate that is not base64",
      () => ({ certFile: at("bad-base64.pem"), keyFile: certs.keyFile }),
      /^TLS_CERT_FILE must name a PEM certificate, got ".*bad-base64\.pem" \(bad base64 decode\)$/,
    ],
    [
      "a certificate where the key should be",
      () => ({ certFile: certs.certFile, keyFile: certs.caFile }),
      /^TLS_KEY_FILE must name a PEM private key, got ".*ca\.pem" \(it holds CERTIFICATE where PRIVATE KEY is expected\)$/,
    ],
  ])("refuses %s with one line", async (_, files, message) => {
    const read = readTlsCredentials(files());
    await expect(read).rejects.toThrow(ConfigError);
    await expect(readTlsCredentials(files())).rejects.toThrow(message);
  });

  it("reads a CA certificate for the upstreams", async () => {
    expect((await readUpstreamCa(certs.caFile))?.toString()).toBe(
      readFileSync(certs.caFile, "utf8"),
    );
  });

  it.each([
    [
      "a private key",
      () => certs.keyFile,
      /\(it holds PRIVATE KEY where CERTIFICATE is expected\)$/,
    ],
    ["a certificate that is not base64", () => at("bad-base64.pem"), /\(bad base64 decode\)$/],
    ["a bundle with one broken certificate", () => at("bundle.pem"), /\(.+\)$/],
  ])("refuses UPSTREAM_CA_FILE holding %s with one line", async (_, path, reason) => {
    const read = () => readUpstreamCa(path());
    await expect(read()).rejects.toThrow(ConfigError);
    await expect(read()).rejects.toThrow(
      /^UPSTREAM_CA_FILE must name a PEM file of CA certificates, got "[^"]+" \(/,
    );
    await expect(read()).rejects.toThrow(reason);
  });
});
