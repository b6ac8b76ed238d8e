import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createSecureContext } from "node:tls";
import { ConfigError, type TlsFiles } from "./config.js";

/** A listener's certificate chain and private key, PEM. */
export interface TlsCredentials {
  readonly cert: Buffer;
  readonly key: Buffer;
}

async function readPem(path: string, variable: string): Promise<Buffer> {
  let pem: Buffer;
  try {
    pem = await readFile(path);
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ConfigError(`${variable} must name a readable PEM file, got "${path}" (${reason})`);
  }
  if (!pem.includes("-----BEGIN ")) {
    throw new ConfigError(`${variable} must name a PEM file, got "${path}" (no PEM block in it)`);
  }
  return pem;
}

/** The PEM blocks of a file: their label (CERTIFICATE, PRIVATE KEY, …) and text. */
function pemBlocks(pem: Buffer): { label: string; text: string }[] {
  const blocks = pem
    .toString("latin1")
    .matchAll(/-----BEGIN ([^-\r\n]+)-----[\s\S]*?-----END \1-----/g);
  return [...blocks].map(([text, label]) => ({ label: label as string, text }));
}

/** OpenSSL's reason for a failure ("key values mismatch"), without its error-code prefix. */
function reasonOf(err: unknown): string {
  const reason = (err as { reason?: unknown }).reason;
  if (typeof reason === "string" && reason !== "") return reason;
  return err instanceof Error ? err.message : String(err);
}

/** Runs `check`; a throw becomes a ConfigError naming `variable` and `path`. */
function expectPem(variable: string, path: string, expected: string, check: () => void): void {
  try {
    check();
  } catch (err) {
    throw new ConfigError(`${variable} must name ${expected}, got "${path}" (${reasonOf(err)})`);
  }
}

/** What a PEM file holds instead of the `wanted` block, as a reason. */
function holds(blocks: readonly { label: string }[], wanted: string): Error {
  const labels = [...new Set(blocks.map((b) => b.label))];
  return new Error(
    labels.length === 0
      ? `no ${wanted} block in it`
      : `it holds ${labels.join(", ")} where ${wanted} is expected`,
  );
}

/**
 * Checks that the certificate and key parse and belong together, so that a
 * broken pair stops the start with one line instead of failing in the TLS
 * server (or at every handshake).
 */
function checkCredentials(files: TlsFiles, credentials: TlsCredentials): void {
  // Other blocks (EC PARAMETERS before an EC key, say) are skipped, as OpenSSL does.
  const certBlocks = pemBlocks(credentials.cert);
  expectPem("TLS_CERT_FILE", files.certFile, "a PEM certificate", () => {
    const cert = certBlocks.find((b) => b.label === "CERTIFICATE");
    if (cert === undefined) throw holds(certBlocks, "CERTIFICATE");
    new X509Certificate(cert.text);
  });
  const keyBlocks = pemBlocks(credentials.key);
  expectPem("TLS_KEY_FILE", files.keyFile, "a PEM private key", () => {
    const key = keyBlocks.find((b) => b.label.endsWith("PRIVATE KEY"));
    if (key === undefined) throw holds(keyBlocks, "PRIVATE KEY");
    createPrivateKey(key.text);
  });
  try {
    createSecureContext({ cert: credentials.cert, key: credentials.key });
  } catch (err) {
    throw new ConfigError(
      `TLS_CERT_FILE and TLS_KEY_FILE must be a PEM certificate and its private key: ${reasonOf(err)}`,
    );
  }
}

/**
 * Reads TLS_CERT_FILE and TLS_KEY_FILE; undefined (cleartext) when they are
 * not set. A file that is not what it should be, or a key that is not the
 * certificate's, is a ConfigError naming the variables.
 */
export async function readTlsCredentials(
  files: TlsFiles | undefined,
): Promise<TlsCredentials | undefined> {
  if (files === undefined) return undefined;
  const [cert, key] = await Promise.all([
    readPem(files.certFile, "TLS_CERT_FILE"),
    readPem(files.keyFile, "TLS_KEY_FILE"),
  ]);
  const credentials = { cert, key };
  checkCredentials(files, credentials);
  return credentials;
}

/**
 * Reads UPSTREAM_CA_FILE, the CA the gateway trusts for its https://
 * services. It must hold at least one certificate and every certificate in
 * it must parse: Node would otherwise skip what it cannot read, and every
 * call to a service would fail its handshake.
 */
export async function readUpstreamCa(path: string | undefined): Promise<Buffer | undefined> {
  return path === undefined ? undefined : readCaFile(path, "UPSTREAM_CA_FILE");
}

/**
 * Reads a PEM file of CA certificates that `setting` names: at least one
 * certificate, every one of which parses.
 */
export async function readCaFile(path: string, setting: string): Promise<Buffer> {
  const pem = await readPem(path, setting);
  const blocks = pemBlocks(pem);
  expectPem(setting, path, "a PEM file of CA certificates", () => {
    const certificates = blocks.filter((b) => b.label === "CERTIFICATE");
    if (certificates.length === 0) throw holds(blocks, "CERTIFICATE");
    for (const certificate of certificates) new X509Certificate(certificate.text);
  });
  return pem;
}
