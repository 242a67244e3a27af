// What a failed connection to the primary means, in words a user can act on: Node's socket errors
// ("connect ECONNREFUSED 127.0.0.1:5432") name neither the server nor the setting to check.

/** The primary's address as configured (postgres_replication.*). */
export interface PrimaryAddress {
  host: string;
  port: number;
}

interface SocketError {
  code?: unknown;
  port?: unknown;
  address?: unknown;
  hostname?: unknown;
}

const SETTINGS = "postgres_replication.postgres_server_address and postgres_port";

/**
 * The message for `err` when it is a failure to reach the primary at `primary`; undefined for
 * anything else (the store's socket, errors from a server that answered).
 */
export function explainPrimaryConnectionError(err: unknown, primary: PrimaryAddress): string | undefined {
  if (!err || typeof err !== "object") return undefined;
  const e = err as SocketError;
  const where = `the primary at ${primary.host}:${primary.port}`;
  if (e.code === "ENOTFOUND" || e.code === "EAI_AGAIN") {
    if (e.hostname !== undefined && e.hostname !== primary.host) return undefined;
    return `cannot reach ${where}: the host name does not resolve (${e.code}); check ${SETTINGS}. Strata keeps retrying`;
  }
  // A unix socket's path in `address`, or another port: not the primary's connection.
  if (typeof e.address === "string" && e.address.startsWith("/")) return undefined;
  if (e.port !== undefined && e.port !== primary.port) return undefined;
  switch (e.code) {
    case "ECONNREFUSED":
      return `cannot reach ${where}: connection refused; is PostgreSQL running and listening there (listen_addresses, port)? Check ${SETTINGS}. Strata keeps retrying`;
    case "EHOSTUNREACH":
    case "ENETUNREACH":
    case "ETIMEDOUT":
      return `cannot reach ${where}: no route or no answer (${e.code}); check ${SETTINGS} and any firewall in between. Strata keeps retrying`;
    default:
      return undefined;
  }
}
