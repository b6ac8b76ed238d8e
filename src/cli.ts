import { ConfigError, loadClientConfig } from "./lib/config.js";
import { ignoreHangup } from "./lib/serve.js";
import { quietOnClosedOutput } from "./lib/terminal.js";

const usage = `usage: chatmesh <command>

commands:
  gateway            the HTTP gateway (GATEWAY_PORT, default 8080)
  filter             chat.v1.FilterService (FILTER_PORT, default 50052)
  token              chat.v1.TokenService (TOKEN_PORT, default 50051)
  llm                chat.v1.LLMService (LLM_PORT, default 50055)
  history            chat.v1.HistoryService (HISTORY_PORT, default 50053)
  all                the gateway and the four services in one process, each on its port
  client "text"      the seed's client: Filter then LLM over gRPC
  run-all            every process at once, for development
  healthcheck [name] GET /healthz of a process (default: the container's), exit 0 if 200

Processes are configured by environment variables (see README.md).`;

const processes: Record<string, () => Promise<{ main: () => Promise<void> }>> = {
  gateway: () => import("./gateway/main.js"),
  filter: () => import("./services/filter/main.js"),
  token: () => import("./services/token/main.js"),
  llm: () => import("./services/llm/main.js"),
  history: () => import("./services/history/main.js"),
  all: () => import("./all-in-one.js"),
};

async function run(argv: readonly string[]): Promise<number | undefined> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    console.log(usage);
    return command === undefined ? 2 : 0;
  }
  const asksHelp = rest.some((arg) => arg === "--help" || arg === "-h");
  const start = processes[command];
  // Starting anyway would take the ports of the processes asked about.
  if (start !== undefined || command === "run-all") {
    if (asksHelp) {
      console.log(usage);
      return 0;
    }
    if (rest.length > 0) {
      console.error(
        `chatmesh ${command}: takes no arguments, got "${rest.join(" ")}" (a process is configured by environment variables: see README.md)`,
      );
      return 2;
    }
  }
  if (start !== undefined) {
    // From here on: a SIGHUP during start-up must not stop it either.
    ignoreHangup();
    await (await start()).main();
    return undefined;
  }
  if (command === "client") {
    if (asksHelp || rest.join("").trim() === "") {
      console[asksHelp ? "log" : "error"]('usage: chatmesh client "text" (FILTER_URL, LLM_URL)');
      return asksHelp ? 0 : 2;
    }
    quietOnClosedOutput();
    const { runClient } = await import("./client.js");
    return runClient(rest.join(" "), loadClientConfig());
  }
  if (command === "healthcheck") {
    if (asksHelp) {
      console.log(usage);
      return 0;
    }
    const { runHealthcheck } = await import("./lib/healthcheck.js");
    return runHealthcheck(rest[0]);
  }
  if (command === "run-all") {
    const { runAll } = await import("./dev/run-all.js");
    return runAll();
  }
  console.error(`chatmesh: unknown command "${command}"\n\n${usage}`);
  return 2;
}

run(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (err: unknown) => {
    const name = process.argv[2] ?? "chatmesh";
    if (err instanceof ConfigError) {
      console.error(`chatmesh ${name}: ${err.message}`);
    } else {
      console.error(`chatmesh ${name}: failed to start:`, err);
    }
    process.exit(1);
  },
);
