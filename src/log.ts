// Structured logs: one JSON object a line on stderr (stdout stays free for command output).
import pino from "pino";

export type Logger = pino.Logger;

export function createLogger(level = "info"): Logger {
  return pino(
    { level, base: { service: "strata" }, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: 2, sync: true }),
  );
}

/**
 * Node's process warnings (a dependency's deprecation or support notice) as log lines: Node's
 * default prints them to stderr as loose text, which breaks a reader of the JSON lines.
 */
export function logProcessWarnings(log: Logger): void {
  process.removeAllListeners("warning");
  process.on("warning", (warning: Error & { code?: string }) => {
    log.warn({ warning: warning.name, code: warning.code }, warning.message);
  });
}
