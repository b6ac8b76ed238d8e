const levels: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO ",
  40: "WARN ",
  50: "ERROR",
  60: "FATAL",
};
const hidden = new Set(["level", "time", "pid", "hostname", "service", "msg"]);

function show(value: unknown): string {
  if (typeof value === "string") return /\s/.test(value) ? JSON.stringify(value) : value;
  if (typeof value === "object" && value !== null && "message" in value) {
    return JSON.stringify((value as { message: unknown }).message);
  }
  return JSON.stringify(value);
}

/**
 * Makes one pino JSON line readable for a terminal: time, level, message,
 * then key=value pairs. Any other line is returned unchanged.
 */
export function formatLogLine(line: string): string {
  if (!line.startsWith("{")) return line;
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const time = typeof entry.time === "string" ? entry.time.slice(11, 23) : "";
  const level = levels[Number(entry.level)] ?? String(entry.level);
  const pairs = Object.entries(entry)
    .filter(([key]) => !hidden.has(key))
    .map(([key, value]) => `${key}=${show(value)}`);
  return [time, level, String(entry.msg ?? ""), ...pairs].filter((s) => s !== "").join(" ");
}
