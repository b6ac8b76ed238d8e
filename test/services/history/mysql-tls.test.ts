import { sql } from "kysely";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadHistoryConfig } from "../../../src/lib/config.js";
import { openHistoryDatabase } from "../../../src/services/history/database.js";
import { openHistoryStore } from "../../../src/services/history/open-store.js";
import { createMysqlDatabase, startTlsMariadb } from "../../fixtures/databases.js";
import { makeTestCertificates, opensslOrSkip } from "../../fixtures/tls.js";

/** The history store over TLS to a real MariaDB: ssl-mode as the URL gives it. */

const certificates = opensslOrSkip() ? await makeTestCertificates() : undefined;
const server =
  certificates === undefined ? { skip: "no openssl" } : await startTlsMariadb(certificates);
if ("skip" in server) console.warn(`skipping the MySQL TLS tests: ${server.skip}`);

afterAll(async () => {
  if (!("skip" in server)) await server.stop();
});

/** The database of a HISTORY_DATABASE_URL, read as the history process reads it. */
const databaseOf = (url: string) => loadHistoryConfig({ HISTORY_DATABASE_URL: url }).database;

/** The cipher of the connection a query runs on: "" when it is plaintext. */
async function cipherOf(url: string): Promise<string> {
  const { db } = await openHistoryDatabase(databaseOf(url));
  try {
    const { rows } = await sql<{ Value: string }>`show status like 'Ssl_cipher'`.execute(db);
    return rows[0]?.Value ?? "";
  } finally {
    await db.destroy();
  }
}

describe.skipIf("skip" in server)("the MySQL history over TLS", () => {
  const base = () => ("skip" in server ? "" : server.url);
  // Percent-encoded, as a path in a URL must be.
  const ca = () => encodeURIComponent(certificates?.caFile ?? "");

  it("encrypts with ssl-mode=REQUIRED, VERIFY_CA and VERIFY_IDENTITY, and not without", async () => {
    expect(await cipherOf(base())).toBe("");
    expect(await cipherOf(`${base()}?ssl-mode=REQUIRED`)).toMatch(/^TLS_/);
    expect(await cipherOf(`${base()}?ssl-mode=VERIFY_CA&ssl-ca=${ca()}`)).toMatch(/^TLS_/);
    const named = base().replace("127.0.0.1", "localhost");
    expect(await cipherOf(`${named}?ssl-mode=VERIFY_IDENTITY&ssl-ca=${ca()}`)).toMatch(/^TLS_/);
  });

  it("keeps and lists chats over TLS", async () => {
    const store = await openHistoryStore(
      databaseOf(
        `${base().replace("127.0.0.1", "localhost")}?ssl-mode=VERIFY_IDENTITY&ssl-ca=${ca()}`,
      ),
    );
    try {
      await store.append({
        userId: "tls-user",
        requestId: "r1",
        text: "hello",
        reply: "Echo: hello",
        createdAtMs: Date.now(),
      });
      const page = await store.list({ userId: "tls-user", pageSize: 10, pageToken: "" });
      expect(page.entries.map((e) => [e.text, e.reply])).toEqual([["hello", "Echo: hello"]]);
    } finally {
      await store.close();
    }
  });

  it("refuses a certificate it cannot verify with one line", async () => {
    // Node's own CAs do not know the test CA.
    const untrusted = openHistoryStore(databaseOf(`${base()}?ssl-mode=VERIFY_CA`));
    await expect(untrusted).rejects.toThrow(ConfigError);
    await expect(openHistoryStore(databaseOf(`${base()}?ssl-mode=VERIFY_CA`))).rejects.toThrow(
      /^HISTORY_DATABASE_URL must name a database this process can open, got "mysql:\/\/root@127\.0\.0\.1:\d+\/test\?ssl-mode=VERIFY_CA" \(self-signed certificate in certificate chain\)$/,
    );
    // The driver would check the name "localhost" for an address: refused before it connects.
    expect(() => databaseOf(`${base()}?ssl-mode=VERIFY_IDENTITY&ssl-ca=${ca()}`)).toThrow(
      /ssl-mode=VERIFY_IDENTITY needs the server's name, not an IP address/,
    );
  });

  it("refuses an ssl-ca file that holds no certificate with one line", async () => {
    const open = () =>
      openHistoryStore(
        databaseOf(
          `${base()}?ssl-mode=VERIFY_CA&ssl-ca=${encodeURIComponent(certificates?.keyFile ?? "")}`,
        ),
      );
    await expect(open()).rejects.toThrow(ConfigError);
    await expect(open()).rejects.toThrow(
      /^HISTORY_DATABASE_URL's ssl-ca must name a PEM file of CA certificates, got ".+key\.pem" \(it holds PRIVATE KEY where CERTIFICATE is expected\)$/,
    );
  });
});

const plain = await createMysqlDatabase();
if ("skip" in plain) console.warn(`skipping the MySQL TLS refusal: ${plain.skip}`);

describe.skipIf("skip" in plain)("a MySQL server without TLS", () => {
  afterAll(async () => {
    if (!("skip" in plain)) await plain.drop();
  });

  it("is refused with ssl-mode=REQUIRED rather than used in plaintext", async () => {
    if ("skip" in plain) return;
    const open = () => openHistoryStore(databaseOf(`${plain.url}?ssl-mode=REQUIRED`));
    await expect(open()).rejects.toThrow(ConfigError);
    await expect(open()).rejects.toThrow(/\(Server does not support secure connection\)$/);
  });
});
