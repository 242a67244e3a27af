// Structured logs: one JSON object a line on stderr (stdout stays free for command output).
import pino from "pino";

export type Logger = pino.Logger;

export function createLogger(level = "info"): Logger {
  return pino(
    { level, base: { service: "strata" }, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: 2, sync: true }),
  );
}
