import { readFile } from "node:fs/promises";
import { defaultPorts, type Env, loadHealthcheckConfig } from "./config.js";

/** A process `chatmesh healthcheck` can check. */
export type CheckedProcess = keyof typeof defaultPorts;

function isProcess(name: string | undefined): name is CheckedProcess {
  return name !== undefined && Object.hasOwn(defaultPorts, name);
}

/**
 * The chatmesh process a NUL-separated command line starts
 * (`node bin/chatmesh.js token`, also behind an init such as
 * `docker-init -- node bin/chatmesh.js token`; the gateway for `chatmesh
 * all`), or undefined.
 */
export function processFromCmdline(cmdline: string): CheckedProcess | undefined {
  const args = cmdline.split("\0");
  const at = args.findIndex((arg) => /(^|\/)chatmesh(\.js)?$/.test(arg));
  const name = at === -1 ? undefined : args[at + 1];
  // `chatmesh all` is healthy when its gateway is: the gateway's port answers last.
  if (name === "all") return "gateway";
  return isProcess(name) ? name : undefined;
}

/**
 * What a container runs: PID 1 is the process itself (or an init whose
 * arguments name it), because the image's entry point is the chatmesh command.
 */
async function containerProcess(): Promise<CheckedProcess | undefined> {
  try {
    return processFromCmdline(await readFile("/proc/1/cmdline", "utf8"));
  } catch {
    return undefined;
  }
}

/** Loopback for wildcard binds; the bound address otherwise. */
function probeHost(host: string): string {
  if (host === "0.0.0.0" || host === "::" || host === "") return "127.0.0.1";
  return host.includes(":") ? `[${host}]` : host;
}

/**
 * `chatmesh healthcheck [name]`: GET /healthz of the named process (default:
 * the one this container runs) on the port its environment gives it, for
 * Docker's HEALTHCHECK. Prints one line; returns 0 when it answered 200.
 */
export async function runHealthcheck(
  name: string | undefined,
  env?: Env,
  timeoutMs = 2_500,
): Promise<number> {
  const target = name ?? (await containerProcess());
  if (!isProcess(target)) {
    console.error(
      name === undefined
        ? "healthcheck: name the process (gateway, filter, token, llm, history): PID 1 is not one"
        : `healthcheck: unknown process "${name}"`,
    );
    return 2;
  }
  const { host, port } = loadHealthcheckConfig(target, env);
  const url = `http://${probeHost(host)}:${port}/healthz`;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    if (res.ok) {
      console.log(`${target} healthy (${url})`);
      return 0;
    }
    console.error(`${target} unhealthy: ${url} answered ${res.status}`);
  } catch (err) {
    console.error(`${target} unhealthy: ${url}: ${(err as Error).message}`);
  }
  return 1;
}
