// Strata's system variables, named as Doltgres names them (dolt_*), and Strata's own (strata_*). In the store they are custom
// settings under the `strata.` prefix, so Postgres itself gives them their semantics: SET (and SET
// LOCAL) per session or transaction, RESET, ALTER SYSTEM SET persisted in postgresql.auto.conf,
// config file values as the defaults underneath. The front door maps the Doltgres names onto them
// (see rewrite.ts); `dolt.setting(name)` reads one in SQL on the store directly.

export type VariableKind = "boolean" | "string" | "integer";

export interface VariableDefinition {
  name: string;
  kind: VariableKind;
  default: string;
  /** What the value does today, for docs and SHOW errors. */
  description: string;
  /**
   * When Strata reads it: per session (takes effect at once), by the server a moment after it
   * changes (ALTER SYSTEM; a session's SET does not change what the server does), or at start
   * (takes a restart).
   */
  readAt: "session" | "server" | "start";
  /** Shown, not settable (e.g. a cluster role). */
  readOnly?: boolean;
}

export const VARIABLES: readonly VariableDefinition[] = [
  {
    name: "dolt_transaction_commit",
    kind: "boolean",
    default: "0",
    description: "every SQL COMMIT (and every replicated transaction) becomes a commit",
    readAt: "start",
  },
  {
    name: "dolt_replicate_to_remote",
    kind: "string",
    default: "",
    description: "the remote a primary pushes every commit and branch change to",
    readAt: "server",
  },
  {
    name: "dolt_read_replica_remote",
    kind: "string",
    default: "",
    description: "the remote a read replica pulls from at transaction start",
    readAt: "server",
  },
  {
    name: "dolt_replicate_heads",
    kind: "string",
    default: "",
    description: "the branches a read replica pulls (comma list, * wildcards)",
    readAt: "server",
  },
  {
    name: "dolt_replicate_all_heads",
    kind: "boolean",
    default: "0",
    description: "a read replica pulls every branch and tag",
    readAt: "server",
  },
  {
    name: "dolt_replication_remote_url_template",
    kind: "string",
    default: "",
    description: "remote URL for new databases, with {database}",
    readAt: "server",
  },
  {
    name: "dolt_skip_replication_errors",
    kind: "boolean",
    default: "0",
    description: "replication errors are warnings instead of errors",
    readAt: "server",
  },
  {
    name: "dolt_async_replication",
    kind: "boolean",
    default: "0",
    description: "pushes to the remote happen after the commit returns",
    readAt: "server",
  },
  {
    name: "dolt_cluster_role",
    kind: "string",
    default: "",
    description:
      "this server's cluster role: primary, standby or detected_broken_config ('' without cluster:)",
    readAt: "server",
    readOnly: true,
  },
  {
    name: "dolt_cluster_role_epoch",
    kind: "integer",
    default: "0",
    description: "the epoch of this server's cluster role",
    readAt: "server",
    readOnly: true,
  },
  {
    name: "dolt_cluster_ack_writes_timeout_secs",
    kind: "integer",
    default: "0",
    description:
      "a cluster primary's commits wait up to this many seconds for every standby to apply them (0: they do not wait)",
    readAt: "server",
  },
  {
    name: "strata_allow_replica_writes",
    kind: "boolean",
    default: "0",
    description:
      "clients may write to tables replicated from upstream (the writes are not versioned, and the primary's next change to those rows may conflict)",
    readAt: "session",
  },
];

const byName = new Map(VARIABLES.map((v) => [v.name, v]));

export function findVariable(name: string): VariableDefinition | undefined {
  return byName.get(name.toLowerCase());
}

/** The store setting that holds a variable. */
export const storeSettingName = (variable: VariableDefinition) => `strata.${variable.name}`;

export class VariableError extends Error {
  constructor(
    message: string,
    readonly hint: string,
    readonly code = "22023",
  ) {
    super(message);
  }
}

export function unknownVariable(name: string): VariableError {
  return new VariableError(
    `unrecognized configuration parameter "${name}"`,
    `Strata's system variables are ${VARIABLES.map((v) => v.name).join(", ")}`,
    "42704",
  );
}

/** A value as stored: booleans as 1 / 0 (as Doltgres shows them), the rest as given. */
export function normalizeValue(variable: VariableDefinition, raw: string): string {
  const value = raw.trim();
  if (variable.kind === "boolean") {
    const lower = value.toLowerCase();
    if (["1", "on", "true", "yes", "t", "y"].includes(lower)) return "1";
    if (["0", "off", "false", "no", "f", "n", ""].includes(lower)) return "0";
    throw new VariableError(
      `invalid value for ${variable.name}: "${raw}"`,
      `${variable.name} is a boolean: use 1 or 0 (or on/off, true/false)`,
    );
  }
  if (variable.kind === "integer" && !/^-?\d+$/.test(value))
    throw new VariableError(`invalid value for ${variable.name}: "${raw}"`, `${variable.name} is an integer`);
  if (variable.name === "dolt_cluster_ack_writes_timeout_secs" && Number(value) < 0)
    throw new VariableError(
      `invalid value for dolt_cluster_ack_writes_timeout_secs: "${raw}"`,
      "use a number of seconds, or 0 for commits that do not wait for the standbys",
    );
  if (
    variable.name === "dolt_replication_remote_url_template" &&
    value !== "" &&
    !value.includes("{database}")
  )
    throw new VariableError(
      `invalid value for dolt_replication_remote_url_template: "${raw}" has no {database}`,
      "write the remote URL with {database} where the database name goes, e.g. file:///share/remotes/{database}",
    );
  return raw;
}

/** The config file's side of the variables: `system_variables`, and behavior.dolt_transaction_commit. */
export interface VariableConfig {
  behavior: { dolt_transaction_commit?: boolean };
  system_variables: Record<string, string | number | boolean>;
  postgres_replication?: unknown;
}

/**
 * The store settings the variables start from (config file values over built-in defaults). A
 * replica records a commit per replicated transaction unless told otherwise.
 */
export function defaultSettings(config: VariableConfig): Record<string, string> {
  const configured: Record<string, string | number | boolean | undefined> = {
    dolt_transaction_commit:
      config.behavior.dolt_transaction_commit ?? (config.postgres_replication ? true : undefined),
  };
  for (const [name, value] of Object.entries(config.system_variables)) configured[name.toLowerCase()] = value;
  const settings: Record<string, string> = {};
  for (const variable of VARIABLES) {
    const value = configured[variable.name];
    settings[storeSettingName(variable)] =
      value === undefined
        ? variable.default
        : normalizeValue(variable, typeof value === "boolean" ? (value ? "1" : "0") : String(value));
  }
  return settings;
}
