import { buildGatewayProcess } from "./gateway/main.js";
import {
  ConfigError,
  defaultPorts,
  loadFilterConfig,
  loadGatewayConfig,
  loadHistoryConfig,
  loadLlmConfig,
  loadTokenConfig,
} from "./lib/config.js";
import { localServiceOf } from "./lib/rpc-server.js";
import { closeOnSignals, listen } from "./lib/serve.js";
import { buildFilter } from "./services/filter/main.js";
import { sharedThreadWalAutocheckpoint } from "./services/history/database.js";
import { buildHistory } from "./services/history/main.js";
import { buildLlm } from "./services/llm/main.js";
import { buildToken } from "./services/token/main.js";

/**
 * `chatmesh all`: the gateway and the four services in one process, for
 * single-node installs. Each still listens on its own port with its own
 * health, metrics and reflection, configured by the same variables as when it
 * runs alone, so `buf curl` and the stock clients reach every service; the
 * gateway calls them in this process instead of over sockets (their `*_URL`
 * variables are not used). SIGTERM drains the gateway first, then the
 * services.
 */
export async function main(): Promise<void> {
  // Every component's variables are validated before anything starts.
  const configs = {
    token: loadTokenConfig(),
    filter: loadFilterConfig(),
    llm: loadLlmConfig(),
    history: loadHistoryConfig(),
    gateway: loadGatewayConfig(),
  };
  // Else the second to listen would report its port "already in use", by this very process.
  const names = ["token", "filter", "llm", "history", "gateway"] as const;
  for (const [i, name] of names.entries()) {
    const port = configs[name].port;
    const other = names.slice(0, i).find((earlier) => port !== 0 && configs[earlier].port === port);
    if (other !== undefined) {
      throw new ConfigError(
        `${defaultPorts[other].env} and ${defaultPorts[name].env} are both ${port} (each component listens on a port of its own)`,
      );
    }
  }
  const services = {
    token: await buildToken(configs.token),
    filter: await buildFilter(configs.filter),
    llm: await buildLlm(configs.llm),
    // SQLite's checkpoints run on this thread, the one that serves chats: kept short.
    history: await buildHistory(configs.history, {
      walAutocheckpoint: sharedThreadWalAutocheckpoint,
    }),
  };
  const gateway = await buildGatewayProcess(configs.gateway, {
    token: localServiceOf(services.token.app),
    filter: localServiceOf(services.filter.app),
    llm: localServiceOf(services.llm.app),
    history: localServiceOf(services.history.app),
  });
  for (const name of ["token", "filter", "llm", "history"] as const) {
    const { app, logger } = services[name];
    await listen(app, { ...configs[name], portEnv: defaultPorts[name].env, logger });
  }
  await listen(gateway.app, {
    ...configs.gateway,
    portEnv: defaultPorts.gateway.env,
    logger: gateway.logger,
  });
  closeOnSignals(
    async () => {
      await gateway.app.close();
      await Promise.all(Object.values(services).map(({ app }) => app.close()));
    },
    {
      shutdownTimeoutMs: Math.max(...Object.values(configs).map((c) => c.shutdownTimeoutMs)),
      logger: gateway.logger,
    },
  );
}
