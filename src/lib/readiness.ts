import type { FastifyInstance } from "fastify";

/**
 * One dependency a process needs to serve: resolves when it is usable,
 * rejects (the error's message saying why) when it is not. Checks must be
 * quick; each is given `timeoutMs`.
 */
export type ReadyCheck = () => Promise<void>;

/** What /readyz found: the names of failed checks with why. */
export interface Readiness {
  readonly ready: boolean;
  readonly failures: readonly string[];
}

function withTimeout(check: ReadyCheck, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
    check().then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

/** Runs every check at once. */
export async function checkReadiness(
  checks: Readonly<Record<string, ReadyCheck>>,
  timeoutMs = 1_000,
): Promise<Readiness> {
  const entries = Object.entries(checks);
  const results = await Promise.allSettled(entries.map(([, c]) => withTimeout(c, timeoutMs)));
  const failures = results.flatMap((r, i) =>
    r.status === "rejected"
      ? [`${entries[i]?.[0]} (${r.reason instanceof Error ? r.reason.message : String(r.reason)})`]
      : [],
  );
  return { ready: failures.length === 0, failures };
}

/**
 * Adds `GET /healthz` (alive: `ok`) and `GET /readyz` (200 `ready`, or 503
 * `not ready: <what> (<why>)`; always 503 once the app is closing).
 */
export function registerHealthRoutes(
  app: FastifyInstance,
  checks: Readonly<Record<string, ReadyCheck>> = {},
): void {
  let closing = false;
  app.addHook("preClose", async () => {
    closing = true;
  });
  app.get("/healthz", async (_req, reply) => reply.type("text/plain").send("ok"));
  app.get("/readyz", async (_req, reply) => {
    if (closing) return reply.code(503).type("text/plain").send("not ready: shutting down");
    const { ready, failures } = await checkReadiness(checks);
    if (ready) return reply.type("text/plain").send("ready");
    return reply
      .code(503)
      .type("text/plain")
      .send(`not ready: ${failures.join(", ")}`);
  });
}
