import { describe, expect, it } from "vitest";
import {
  boundedHeapFlags,
  mallocEnv,
  processEnvFor,
  serviceHeapFlags,
} from "../../src/lib/node-options.js";

describe("processEnvFor", () => {
  it("adds the services' heap flag before the caller's NODE_OPTIONS, and the malloc threshold", () => {
    expect(
      processEnvFor("token", { PATH: "/bin", NODE_OPTIONS: "--max-old-space-size=512" }),
    ).toEqual({
      PATH: "/bin",
      NODE_OPTIONS: `${serviceHeapFlags} --max-old-space-size=512`,
      MALLOC_MMAP_THRESHOLD_: "131072",
    });
  });

  it("leaves the gateway's NODE_OPTIONS to the caller, unset when the caller has none", () => {
    const env = processEnvFor("gateway", { PATH: "/bin" });
    expect(env).toEqual({ PATH: "/bin", NODE_OPTIONS: undefined, ...mallocEnv });
  });

  it("keeps a malloc threshold the caller set", () => {
    const env = processEnvFor("token", { MALLOC_MMAP_THRESHOLD_: "65536" });
    expect(env.MALLOC_MMAP_THRESHOLD_).toBe("65536");
    expect(env.NODE_OPTIONS).toBe(serviceHeapFlags);
  });

  it("caps filter's, llm's and history's old generation, before the caller's flags, and no other process's", () => {
    expect(boundedHeapFlags).toBe("--max-semi-space-size=4 --max-old-space-size=512");
    for (const name of ["filter", "llm", "history"]) {
      expect(processEnvFor(name, {}).NODE_OPTIONS, name).toBe(boundedHeapFlags);
      expect(
        processEnvFor(name, { NODE_OPTIONS: "--max-old-space-size=1024" }).NODE_OPTIONS,
        name,
      ).toBe(`${boundedHeapFlags} --max-old-space-size=1024`);
    }
    expect(processEnvFor("token", {}).NODE_OPTIONS).toBe(serviceHeapFlags);
    for (const name of ["gateway", "all", "toString", "constructor"]) {
      expect(processEnvFor(name, {}).NODE_OPTIONS, name).toBeUndefined();
    }
  });
});
