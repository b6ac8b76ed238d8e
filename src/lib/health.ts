import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type Health,
  HealthCheckResponse_ServingStatus as Status,
} from "../../gen/health/v1/health_pb.js";
import { checkReadiness, type ReadyCheck } from "./readiness.js";

export { Health } from "../../gen/health/v1/health_pb.js";

export interface HealthServiceOptions {
  /** The fully-qualified names of the services this process serves. */
  readonly services: readonly string[];
  /** The same checks as /readyz: any failing one makes every service NOT_SERVING. */
  readonly readyChecks?: Readonly<Record<string, ReadyCheck>>;
  /** True once the process drains for shutdown: NOT_SERVING from then on. */
  readonly draining: () => boolean;
  /** How often Watch re-checks. */
  readonly watchIntervalMs?: number;
}

/**
 * grpc.health.v1.Health: Check, Watch and List, per service name and for ""
 * (the whole process).
 */
export function createHealthService(options: HealthServiceOptions): ServiceImpl<typeof Health> {
  const known = new Set(["", ...options.services]);
  const status = async (): Promise<Status> => {
    if (options.draining()) return Status.NOT_SERVING;
    const { ready } = await checkReadiness(options.readyChecks ?? {});
    return ready ? Status.SERVING : Status.NOT_SERVING;
  };
  const requireKnown = (service: string) => {
    if (!known.has(service)) throw new ConnectError(`unknown service "${service}"`, Code.NotFound);
  };
  return {
    async check(req) {
      requireKnown(req.service);
      return { status: await status() };
    },
    async *watch(req, ctx) {
      const signal = ctx.signal;
      let last: Status | undefined;
      while (!signal.aborted) {
        const now = known.has(req.service) ? await status() : Status.SERVICE_UNKNOWN;
        if (now !== last) {
          last = now;
          yield { status: now };
        }
        // Told NOT_SERVING, a watcher lets the process drain: its stream
        // held open would keep a graceful close waiting until it timed out.
        if (options.draining()) return;
        // The abort listener goes once the wait is over: one per wait left on
        // the call's signal added up over a watch of hours (and warned of a leak).
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            signal.removeEventListener("abort", done);
            resolve();
          };
          const timer = setTimeout(done, options.watchIntervalMs ?? 1_000);
          signal.addEventListener("abort", done, { once: true });
        });
      }
    },
    async list() {
      const current = await status();
      return {
        statuses: Object.fromEntries([...known].map((name) => [name, { status: current }])),
      };
    },
  };
}
