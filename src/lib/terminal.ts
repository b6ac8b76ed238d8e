import { readFileSync } from "node:fs";
import { isatty } from "node:tty";

/**
 * Whether the process has a controlling terminal, whose closing sends it
 * SIGHUP. One started in a session of its own (`setsid`, a daemon) has none,
 * even when its streams are a terminal: a SIGHUP it gets is someone's
 * `kill -HUP`, for a reload, however its streams are then. Where /proc
 * cannot tell, it is taken to have one.
 */
export function hasControllingTerminal(): boolean {
  try {
    const stat = readFileSync("/proc/self/stat", "utf8");
    // After the command's name (in parentheses, spaces allowed): state, ppid, pgrp, session, tty_nr.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[4]) !== 0;
  } catch {
    return true;
  }
}

/** The standard streams (0, 1, 2) that are a terminal now. */
export const terminalStreams = (): number[] => [0, 1, 2].filter((fd) => isatty(fd));

/** Whether the terminal of `fds` hung up since they were taken: a closed terminal is one no more. */
export const hungUp = (fds: readonly number[]): boolean => fds.some((fd) => !isatty(fd));

/**
 * Ends the process of SIGHUP, as Node's default would: its own exit aborts
 * when it cannot reset a terminal that hung up.
 */
export function endOfHangup(): void {
  process.removeAllListeners("SIGHUP");
  process.kill(process.pid, "SIGHUP");
}

/**
 * Output to a terminal that hung up (EIO) or to a reader gone (EPIPE:
 * `chatmesh client … | head -1`) goes nowhere: the error, unhandled, ended
 * the process with a stack trace.
 */
export function quietOnClosedOutput(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code !== "EIO" && err.code !== "EPIPE") throw err;
    });
  }
}
