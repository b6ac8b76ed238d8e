import { describe, expect, it, onTestFinished } from "vitest";
import { chatmeshBin, freePort } from "../fixtures/processes.js";
import { running, script, startInTerminal } from "../fixtures/terminal.js";

const refused = async (port: number) => {
  try {
    await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2_000) });
    return false;
  } catch (err) {
    return ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code === "ECONNREFUSED";
  }
};

/** Kills `script`, and the process `pid()` names once it is known, after the test. */
function killAfter(
  terminal: { kill(signal: NodeJS.Signals): unknown },
  pid: () => number | undefined,
) {
  onTestFinished(() => {
    terminal.kill("SIGKILL");
    const known = pid();
    if (known === undefined || !running(known)) return;
    process.kill(known, "SIGKILL");
  });
}

describe.skipIf(script === undefined)("a process whose terminal is closed", () => {
  it("stops, freeing its port, rather than serve on logging into nothing", async () => {
    const port = await freePort();
    // The process in a terminal of `script`'s: killed, `script` closes it, and
    // the process gets the SIGHUP of a terminal hung up.
    const { terminal, output } = startInTerminal(
      `echo "pid=$$"; exec "${process.execPath}" "${chatmeshBin}" token`,
      { TOKEN_PORT: String(port) },
    );
    let pid: number | undefined;
    killAfter(terminal, () => pid);
    await expect.poll(() => /"msg":"listening"/.test(output()), { timeout: 30_000 }).toBe(true);
    pid = Number(/pid=(\d+)/.exec(output())?.[1]);
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);

    terminal.kill("SIGKILL");
    // A request after the hang-up has a line to log: it wrote into a terminal
    // that was gone, and the process hung for good, holding its port.
    await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2_000) }).catch(
      () => undefined,
    );
    await expect.poll(() => refused(port), { timeout: 15_000, interval: 200 }).toBe(true);
    // Ended (a zombie until something reaps it: its parent, `script`, is
    // gone), a moment after its port closed.
    await expect.poll(() => running(pid), { timeout: 5_000, interval: 50 }).toBe(false);
  }, 60_000);
});

describe.skipIf(script === undefined)(
  "a process in a session of its own, its terminal closed",
  () => {
    it("takes a later kill -HUP for a reload, not for the terminal's hang-up", async () => {
      const port = await freePort();
      // setsid: the process's streams are the terminal, but it is not its
      // controlling terminal, so the terminal's closing sends it nothing.
      const { terminal, output } = startInTerminal(
        `setsid --fork sh -c 'echo "pid=$$"; exec "${process.execPath}" "${chatmeshBin}" token'; sleep 600`,
        { TOKEN_PORT: String(port) },
      );
      let pid: number | undefined;
      killAfter(terminal, () => pid);
      await expect.poll(() => /"msg":"listening"/.test(output()), { timeout: 30_000 }).toBe(true);
      pid = Number(/pid=(\d+)/.exec(output())?.[1]);
      terminal.kill("SIGKILL");
      // Its next line goes into the hung-up terminal, and nowhere.
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      process.kill(pid, "SIGHUP");
      await new Promise((r) => setTimeout(r, 1_000));
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      expect(running(pid)).toBe(true);
    }, 60_000);
  },
);
