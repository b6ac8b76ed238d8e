import { beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { loadFilterConfig, loadGatewayConfig, loadLlmConfig } from "../../src/lib/config.js";
import { serviceHeapFlags } from "../../src/lib/node-options.js";
import {
  type ContractProcess,
  contractProcesses,
  imageNodeOptions,
  isThirdPartyImage,
  repoFile,
} from "../fixtures/deploy.js";
import {
  type K8sObject,
  kubectl,
  kustomize,
  schemaErrors,
  unknownFields,
} from "../fixtures/kubernetes.js";

if (kubectl === undefined) {
  if (process.env.CI === "true") throw new Error("CI needs kubectl (kubectl kustomize) on PATH");
  console.log("skipped: deploy/k8s: no kubectl on PATH to render the kustomizations");
}

const processes = Object.keys(contractProcesses) as ContractProcess[];
const renders: Record<string, K8sObject[]> = {};
const find = (objects: K8sObject[], kind: string, name: string) =>
  objects.find((o) => o.kind === kind && o.metadata.name === name) as K8sObject;
const container = (d: K8sObject) => d.spec.template.spec.containers[0];
const decode = (secret: K8sObject, key: string) =>
  Buffer.from(secret.data?.[key] ?? "", "base64").toString("utf8");
/** The one object of `kind` whose generated name starts with `name`. */
const generated = (objects: K8sObject[], kind: string, name: string) =>
  objects.find((o) => o.kind === kind && o.metadata.name.startsWith(`${name}-`)) as K8sObject;

interface Relabel {
  source_labels?: string[];
  regex?: string;
  replacement?: string;
  target_label?: string;
  action?: "replace" | "keep";
}

/** Prometheus's relabelling (replace and keep) of one target's labels; undefined when dropped. */
function relabel(
  labels: Record<string, string>,
  rules: readonly Relabel[],
): Record<string, string> | undefined {
  const out = { ...labels };
  for (const rule of rules) {
    const value = (rule.source_labels ?? []).map((name) => out[name] ?? "").join(";");
    const match = new RegExp(`^(?:${rule.regex ?? "(.*)"})$`).exec(value);
    if (rule.action === "keep") {
      if (match === null) return undefined;
    } else if (match !== null && rule.target_label !== undefined) {
      out[rule.target_label] = (rule.replacement ?? "$1").replace(
        /\$(\d+)/g,
        (_, n: string) => match[Number(n)] ?? "",
      );
    }
  }
  return out;
}

/** The meta labels Prometheus's Kubernetes pod discovery gives a pod's port. */
function podMeta(
  pod: { metadata: { labels?: Record<string, string>; annotations?: Record<string, string> } },
  name: string,
  port: number,
): Record<string, string> {
  const meta: Record<string, string> = {
    __address__: `10.0.0.7:${port}`,
    __meta_kubernetes_pod_name: `${name}-5d4f8-abcde`,
    __meta_kubernetes_namespace: "chatmesh",
  };
  const clean = (key: string) => key.replace(/[^a-zA-Z0-9_]/g, "_");
  for (const [k, v] of Object.entries(pod.metadata.labels ?? {}))
    meta[`__meta_kubernetes_pod_label_${clean(k)}`] = String(v);
  for (const [k, v] of Object.entries(pod.metadata.annotations ?? {}))
    meta[`__meta_kubernetes_pod_annotation_${clean(k)}`] = String(v);
  return meta;
}

describe.skipIf(kubectl === undefined)("deploy/k8s", () => {
  beforeAll(async () => {
    renders.base = await kustomize("deploy/k8s/base");
    renders.local = await kustomize("deploy/k8s/overlays/local");
  });

  describe.for(["base", "local"])("the %s kustomization", (which) => {
    it("renders, and every object is valid against the bundled Kubernetes schemas", async () => {
      const objects = renders[which] as K8sObject[];
      expect(objects.length).toBeGreaterThan(processes.length * 3);
      const errors = [];
      for (const obj of objects) {
        const error = await schemaErrors(obj);
        if (error !== undefined) errors.push(`${obj.kind}/${obj.metadata.name}: ${error}`);
      }
      expect(errors).toEqual([]);
    });

    it("has no field the Kubernetes API does not know", () => {
      expect(unknownFields(renders[which] as K8sObject[])).toEqual([]);
    });

    it("resolves every ConfigMap and Secret a container refers to", () => {
      const objects = renders[which] as K8sObject[];
      const names = new Set(objects.map((o) => `${o.kind}/${o.metadata.name}`));
      for (const d of objects.filter((o) => o.kind === "Deployment")) {
        for (const c of d.spec.template.spec.containers) {
          for (const from of c.envFrom ?? []) {
            if (from.configMapRef) expect(names).toContain(`ConfigMap/${from.configMapRef.name}`);
            if (from.secretRef) expect(names).toContain(`Secret/${from.secretRef.name}`);
          }
          for (const env of c.env ?? []) {
            const ref = env.valueFrom?.secretKeyRef;
            if (ref === undefined) continue;
            const secret = find(objects, "Secret", ref.name);
            expect(secret, `${d.metadata.name}: ${ref.name}`).toBeDefined();
            expect(Object.keys(secret.data ?? {}), `${d.metadata.name}: ${ref.key}`).toContain(
              ref.key,
            );
          }
        }
      }
    });

    it("names only our image and pinned official images", () => {
      for (const d of (renders[which] as K8sObject[]).filter((o) => o.kind === "Deployment")) {
        const image = container(d).image as string;
        const ours = d.metadata.labels?.["app.kubernetes.io/name"] === "chatmesh";
        expect(ours ? /^chatmesh:[\w.-]+$/.test(image) : isThirdPartyImage(image), image).toBe(
          true,
        );
      }
    });
  });

  describe("base", () => {
    const objects = () => renders.base as K8sObject[];

    it.for(processes)("runs %s as a Deployment behind a Service on its contract port", (name) => {
      const d = find(objects(), "Deployment", name);
      const c = container(d);
      const portName = name === "gateway" ? "http" : "grpc";
      expect(c.args).toEqual([name]);
      expect(c.ports).toEqual([
        { name: portName, containerPort: contractProcesses[name].port, protocol: "TCP" },
      ]);
      const service = find(objects(), "Service", name);
      expect(service.spec.selector).toEqual(d.spec.selector.matchLabels);
      expect(d.spec.template.metadata.labels).toMatchObject(d.spec.selector.matchLabels);
      expect(service.spec.ports).toEqual([
        {
          name: portName,
          port: contractProcesses[name].port,
          targetPort: portName,
          protocol: "TCP",
          appProtocol: name === "gateway" ? "http" : "kubernetes.io/h2c",
        },
      ]);
      // No other process's pods answer on this Service.
      const others = objects().filter((o) => o.kind === "Deployment" && o !== d);
      for (const other of others) {
        const labels = other.spec.template.metadata.labels;
        const matches = Object.entries(service.spec.selector).every(([k, v]) => labels[k] === v);
        expect(matches, other.metadata.name).toBe(false);
      }
    });

    it.for(processes)("probes %s on /readyz and /healthz and bounds its resources", (name) => {
      const c = container(find(objects(), "Deployment", name));
      const port = c.ports[0].name;
      // The gateway's /readyz checks the services every replica shares: not a reason to leave the Service.
      const ready = name === "gateway" ? "/healthz" : "/readyz";
      expect(c.readinessProbe.httpGet).toEqual({ path: ready, port });
      expect(c.livenessProbe.httpGet).toEqual({ path: "/healthz", port });
      for (const kind of ["requests", "limits"]) {
        expect(Object.keys(c.resources[kind]).sort(), kind).toEqual(["cpu", "memory"]);
      }
    });

    it.for(processes)("runs %s as non-root, read-only, and stops it gracefully", (name) => {
      const d = find(objects(), "Deployment", name);
      const pod = d.spec.template.spec;
      const c = container(d);
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000 });
      expect(pod.enableServiceLinks).toBe(false);
      expect(c.securityContext).toEqual({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        capabilities: { drop: ["ALL"] },
      });
      const config = generated(objects(), "ConfigMap", "chatmesh-config");
      const shutdownMs = Number(config.data.SHUTDOWN_TIMEOUT_MS);
      const preStopMs = Number(c.lifecycle.preStop.exec.command[1]) * 1000;
      expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(shutdownMs + preStopMs);
    });

    it("lets a chat whose model call began before SIGTERM finish before the gateway and the llm exit", () => {
      // A rolling update or an HPA scale-down: the chat's Filter and Token
      // calls, its model call of up to LLM_TIMEOUT_MS, then the charge's
      // settlement, which the gateway allows twice TOKEN_TIMEOUT_MS.
      const config = generated(objects(), "ConfigMap", "chatmesh-config");
      const gateway = loadGatewayConfig(config.data);
      const llm = loadLlmConfig(config.data);
      const chatMs =
        gateway.filterTimeoutMs +
        gateway.tokenTimeoutMs +
        gateway.llmTimeoutMs +
        2 * gateway.tokenTimeoutMs;
      expect(gateway.shutdownTimeoutMs).toBeGreaterThan(chatMs);
      expect(llm.shutdownTimeoutMs).toBeGreaterThan(llm.timeoutMs);
    });

    it("has Prometheus (deploy/prometheus/kubernetes.yml) scrape each pod as its process, /metrics on its port", () => {
      const config = parse(repoFile("deploy/prometheus/kubernetes.yml"));
      const rules = config.scrape_configs[0].relabel_configs as Relabel[];
      for (const name of processes) {
        const d = find(objects(), "Deployment", name);
        // Discovery gives a target per declared container port; the annotation picks the port.
        for (const declared of container(d).ports as { containerPort: number }[]) {
          const target = relabel(podMeta(d.spec.template, name, declared.containerPort), rules);
          expect(target, name).toMatchObject({
            job: name,
            instance: `${name}-5d4f8-abcde`,
            __address__: `10.0.0.7:${contractProcesses[name].port}`,
            __metrics_path__: "/metrics",
          });
        }
      }
      // Not ours: dropped.
      const other = { metadata: { labels: { app: "redis" }, annotations: {} } };
      expect(relabel(podMeta(other, "redis", 6379), rules)).toBeUndefined();
    });

    it("scales the gateway and the llm with HPAs, and guards every process with a PDB", () => {
      const hpas = objects().filter((o) => o.kind === "HorizontalPodAutoscaler");
      expect(hpas.map((h) => h.spec.scaleTargetRef.name).sort()).toEqual(["gateway", "llm"]);
      for (const hpa of hpas) {
        expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2);
        // The HPA owns the count: a fixed one would be reset on every apply.
        expect(find(objects(), "Deployment", hpa.spec.scaleTargetRef.name).spec.replicas).toBe(
          undefined,
        );
      }
      for (const name of processes) {
        const pdb = find(objects(), "PodDisruptionBudget", name);
        expect(pdb.spec.selector.matchLabels).toEqual(
          find(objects(), "Deployment", name).spec.selector.matchLabels,
        );
        expect(pdb.spec.maxUnavailable).toBe(1);
      }
    });

    it("gives every process the contract's env, and each credential only to its process", () => {
      const config = generated(objects(), "ConfigMap", "chatmesh-config");
      for (const name of ["token", "filter", "history", "llm"] as const) {
        expect(config.data[`${name.toUpperCase()}_URL`]).toBe(
          `http://${find(objects(), "Service", name).metadata.name}:${contractProcesses[name].port}`,
        );
      }
      expect(config.data).toMatchObject({ HOST: "0.0.0.0", QUOTA_STORE: "redis" });
      expect(loadGatewayConfig(config.data).filterUrl).toBe("http://filter:50052");
      expect(loadFilterConfig(config.data).port).toBe(50052);
      expect(loadLlmConfig(config.data).backend).toBe("echo");
      const secretsOf = (name: string) =>
        (container(find(objects(), "Deployment", name)).env ?? [])
          .filter((e: { valueFrom?: unknown }) => e.valueFrom !== undefined)
          .map((e: { name: string }) => e.name);
      expect(secretsOf("token")).toEqual(["REDIS_URL"]);
      expect(secretsOf("history")).toEqual(["HISTORY_DATABASE_URL"]);
      expect(secretsOf("llm")).toEqual(["OPENAI_API_KEY"]);
      expect(secretsOf("gateway")).toEqual([]);
      expect(secretsOf("filter")).toEqual([]);
      const secret = generated(objects(), "Secret", "chatmesh-secrets");
      expect(decode(secret, "REDIS_URL")).toMatch(/^redis:\/\/:[^@]+@[\w.-]+:\d+$/);
      expect(decode(secret, "HISTORY_DATABASE_URL")).toMatch(
        /^mysql:\/\/\w+:[^@]+@[\w.-]+:\d+\/\w+$/,
      );
    });
  });

  it("runs the four services with the smaller young generation, keeping the image's flags", () => {
    const nodeOptionsOf = (name: string) =>
      (container(find(renders.base as K8sObject[], "Deployment", name)).env ?? []).find(
        (e: { name: string }) => e.name === "NODE_OPTIONS",
      )?.value;
    for (const name of ["token", "filter", "history", "llm"]) {
      // No old-generation limit, history's included: Node sizes the heap
      // from the container's memory limit, which every Deployment sets.
      expect(nodeOptionsOf(name), name).toBe(`${imageNodeOptions()} ${serviceHeapFlags}`);
    }
    expect(nodeOptionsOf("gateway")).toBeUndefined();
  });

  describe("overlays/local", () => {
    const objects = () => renders.local as K8sObject[];

    it("puts everything in the chatmesh namespace", () => {
      expect(find(objects(), "Namespace", "chatmesh")).toBeDefined();
      for (const o of objects().filter((o) => o.kind !== "Namespace")) {
        expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBe("chatmesh");
      }
    });

    it("runs one replica of each process from the locally loaded image", () => {
      for (const name of processes) {
        const d = find(objects(), "Deployment", name);
        expect(d.spec.replicas ?? 1, name).toBe(1);
        expect(container(d)).toMatchObject({
          image: "chatmesh:local",
          imagePullPolicy: "IfNotPresent",
        });
      }
      for (const hpa of objects().filter((o) => o.kind === "HorizontalPodAutoscaler")) {
        expect(hpa.spec.minReplicas).toBe(1);
      }
    });

    it("runs Redis and MariaDB in the cluster, with the credentials the processes use", () => {
      const stores = generated(objects(), "Secret", "chatmesh-stores");
      const secrets = generated(objects(), "Secret", "chatmesh-secrets");
      const redis = find(objects(), "Service", "redis");
      const mariadb = find(objects(), "Service", "mariadb");
      expect(find(objects(), "Deployment", "redis")).toBeDefined();
      expect(find(objects(), "Deployment", "mariadb")).toBeDefined();
      expect(decode(secrets, "REDIS_URL")).toBe(
        `redis://:${decode(stores, "REDIS_PASSWORD")}@${redis.metadata.name}:${redis.spec.ports[0].port}`,
      );
      expect(decode(secrets, "HISTORY_DATABASE_URL")).toBe(
        `mysql://${decode(stores, "MARIADB_USER")}:${decode(stores, "MARIADB_PASSWORD")}@${
          mariadb.metadata.name
        }:${mariadb.spec.ports[0].port}/${decode(stores, "MARIADB_DATABASE")}`,
      );
      const redisArgs = container(find(objects(), "Deployment", "redis")).args;
      expect(redisArgs.slice(0, 2)).toEqual(["--requirepass", "$(REDIS_PASSWORD)"]);
    });
  });
});
