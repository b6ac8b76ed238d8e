import { readFile } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { defaultPorts, type Env, loadHealthcheckConfig } from "./config.js";
import { localUrlHost } from "./local-host.js";

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

/**
 * GET `url`; resolves with the status. Over https the server's certificate is
 * not verified: this checks that the machine's own process answers on its own
 * address, and that certificate names the deployment's public host name (not
 * 127.0.0.1) and is signed by a CA the container need not have. Nothing
 * secret is sent, and the answer only says whether the process is alive.
 */
export function getStatus(url: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const options = { rejectUnauthorized: false, timeout: timeoutMs };
    const req = (url.startsWith("https:") ? https : http).get(url, options, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.once("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.once("error", reject);
  });
}

/**
 * `chatmesh healthcheck [name]`: GET /healthz of the named process (default:
 * the one this container runs) on the port its environment gives it, for
 * Docker's HEALTHCHECK, over https when the process serves TLS (TLS_CERT_FILE).
 * Prints one line; returns 0 when it answered 200.
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
  const { host, port, tls } = loadHealthcheckConfig(target, env);
  const url = `${tls ? "https" : "http"}://${localUrlHost(host)}:${port}/healthz`;
  try {
    const status = await getStatus(url, timeoutMs);
    if (status >= 200 && status < 300) {
      console.log(`${target} healthy (${url})`);
      return 0;
    }
    console.error(`${target} unhealthy: ${url} answered ${status}`);
  } catch (err) {
    console.error(`${target} unhealthy: ${url}: ${(err as Error).message}`);
  }
  return 1;
}
