import { describe, expect, it } from "vitest";
import { processFromCmdline } from "../../src/lib/healthcheck.js";

const cmdline = (...args: string[]) => `${args.join("\0")}\0`;

describe("processFromCmdline", () => {
  it("finds the process of the image's entry point", () => {
    expect(processFromCmdline(cmdline("node", "bin/chatmesh.js", "token"))).toBe("token");
    expect(processFromCmdline(cmdline("node", "/app/bin/chatmesh.js", "history"))).toBe("history");
    expect(processFromCmdline(cmdline("/usr/local/bin/chatmesh", "llm"))).toBe("llm");
  });

  it("checks the gateway of chatmesh all", () => {
    expect(processFromCmdline(cmdline("node", "bin/chatmesh.js", "all"))).toBe("gateway");
  });

  it("looks past an init in front of the command (docker run --init)", () => {
    expect(
      processFromCmdline(cmdline("/sbin/docker-init", "--", "node", "bin/chatmesh.js", "gateway")),
    ).toBe("gateway");
  });

  it("knows nothing of other commands and other programs", () => {
    expect(processFromCmdline(cmdline("node", "bin/chatmesh.js", "run-all"))).toBeUndefined();
    expect(processFromCmdline(cmdline("node", "bin/chatmesh.js"))).toBeUndefined();
    expect(processFromCmdline(cmdline("/sbin/init", "splash"))).toBeUndefined();
    expect(processFromCmdline(cmdline("node", "bin/notchatmesh.js", "token"))).toBeUndefined();
  });
});
