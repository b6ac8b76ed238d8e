import { readFile } from "node:fs/promises";
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

/** Reads TLS_CERT_FILE and TLS_KEY_FILE; undefined (cleartext) when they are not set. */
export async function readTlsCredentials(
  files: TlsFiles | undefined,
): Promise<TlsCredentials | undefined> {
  if (files === undefined) return undefined;
  const [cert, key] = await Promise.all([
    readPem(files.certFile, "TLS_CERT_FILE"),
    readPem(files.keyFile, "TLS_KEY_FILE"),
  ]);
  return { cert, key };
}

/** Reads UPSTREAM_CA_FILE, the CA the gateway trusts for its https:// services. */
export async function readUpstreamCa(path: string | undefined): Promise<Buffer | undefined> {
  return path === undefined ? undefined : readPem(path, "UPSTREAM_CA_FILE");
}
