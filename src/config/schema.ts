// config.yaml: the schema, its defaults, and the checks that give a user an error they can act on.
// Key names follow Doltgres (listener, data_dir, postgres_replication.*, behavior.*) so that its
// documentation works for Strata. Strata's own additions are documented in the README.
import { z } from "zod";
import { findVariable, normalizeValue, VARIABLES, type VariableError } from "./variables.ts";

const port = (key: string) =>
  z
    .number({ error: `${key} must be a TCP port number (an integer 1-65535)` })
    .int({ error: `${key} must be a TCP port number (an integer 1-65535)` })
    .min(1, { error: `${key} must be a TCP port number (an integer 1-65535)` })
    .max(65535, { error: `${key} must be a TCP port number (an integer 1-65535)` });

const name = (key: string) =>
  z
    .string({ error: `${key} must be a non-empty string` })
    .min(1, { error: `${key} must be a non-empty string` })
    .max(63, { error: `${key} must be at most 63 bytes (a Postgres identifier)` });

/** `section.a` and `section.b` go together: without one of them, an issue naming the one missing. */
function requireBoth(
  ctx: z.RefinementCtx,
  values: Record<string, unknown>,
  section: string,
  [a, b]: [string, string],
  /** What needs them, with its verb: "TLS takes". */
  needs: string,
  /** After "or neither": what leaving both out means, if anything. */
  neither = "",
): void {
  if (Boolean(values[a]) === Boolean(values[b])) return;
  const missing = values[a] ? b : a;
  ctx.addIssue({
    code: "custom",
    path: [missing],
    message: `${section}.${missing} is needed too: ${needs} both ${section}.${a} and ${section}.${b} (or neither${neither})`,
  });
}

export const postgresReplicationSchema = z.object({
  postgres_server_address: z
    .string({
      error: "postgres_replication.postgres_server_address must be a host name or IP address, e.g. 127.0.0.1",
    })
    .min(1, {
      error: "postgres_replication.postgres_server_address must be a host name or IP address, e.g. 127.0.0.1",
    }),
  postgres_port: port("postgres_replication.postgres_port").default(5432),
  postgres_user: name("postgres_replication.postgres_user"),
  postgres_password: z
    .string({ error: "postgres_replication.postgres_password must be a string" })
    .default(""),
  postgres_database: name("postgres_replication.postgres_database"),
  slot_name: z
    .string({ error: "postgres_replication.slot_name must be a string" })
    .regex(/^[a-z0-9_]{1,63}$/, {
      error:
        "postgres_replication.slot_name may contain only lower-case letters, digits and underscores (1-63), as Postgres requires",
    }),
  publication_name: name("postgres_replication.publication_name").optional(),
  // Strata's own keys.
  /** Bytes of in-progress streamed transactions held in memory before spilling to disk. */
  memory_limit_mb: z
    .number({ error: "postgres_replication.memory_limit_mb must be a number of megabytes" })
    .positive()
    .default(64),
  /** Interval of Standby Status Updates sent without being asked. */
  status_interval_ms: z
    .number({ error: "postgres_replication.status_interval_ms must be a number of milliseconds" })
    .int()
    .min(100)
    .default(10_000),
  /** Tables to publish when Strata creates the publication (default: FOR ALL TABLES). */
  publication_tables: z
    .array(
      z.string({ error: "postgres_replication.publication_tables must list table names" }).min(1, {
        error: "postgres_replication.publication_tables must list table names, e.g. [public.orders]",
      }),
      {
        error: "postgres_replication.publication_tables must be a list of table names, e.g. [public.orders]",
      },
    )
    .min(1, {
      error: "postgres_replication.publication_tables must name at least one table (or be left out)",
    })
    .optional(),
  /** Connections that copy tables in parallel during an initial snapshot. */
  snapshot_workers: z
    .number({ error: "postgres_replication.snapshot_workers must be a whole number of workers (1-64)" })
    .int({ error: "postgres_replication.snapshot_workers must be a whole number of workers (1-64)" })
    .min(1, { error: "postgres_replication.snapshot_workers must be a whole number of workers (1-64)" })
    .max(64, { error: "postgres_replication.snapshot_workers must be a whole number of workers (1-64)" })
    .default(4),
  /** Tables larger than this are copied in ctid ranges of about this size, by several workers. */
  snapshot_chunk_mb: z
    .number({ error: "postgres_replication.snapshot_chunk_mb must be a number of megabytes" })
    .positive({ error: "postgres_replication.snapshot_chunk_mb must be a positive number of megabytes" })
    .default(128),
  /** What to do when the slot is lost: stop with the remedy (off), or take a fresh snapshot (auto). */
  resync: z
    .enum(["off", "auto"], { error: "postgres_replication.resync must be off or auto" })
    .default("off"),
  /** Warn (log and status) when the slot retains more WAL than this on the primary. */
  slot_wal_warning_mb: z
    .number({ error: "postgres_replication.slot_wal_warning_mb must be a number of megabytes" })
    .positive({ error: "postgres_replication.slot_wal_warning_mb must be a positive number of megabytes" })
    .default(1024),
  /** How often sequence values are copied from the primary (0: only at snapshot and on demand). */
  sequence_sync_interval_ms: z
    .number({ error: "postgres_replication.sequence_sync_interval_ms must be a number of milliseconds" })
    .int({ error: "postgres_replication.sequence_sync_interval_ms must be a whole number of milliseconds" })
    .min(0, { error: "postgres_replication.sequence_sync_interval_ms must be 0 (off) or more" })
    .default(60_000),
  /** Longest wait between reconnection attempts. */
  reconnect_max_delay_ms: z
    .number({ error: "postgres_replication.reconnect_max_delay_ms must be a number of milliseconds" })
    .int()
    .min(100)
    .default(30_000),
});

const nonEmpty = (key: string, what: string) =>
  z.string({ error: `${key} must be ${what}` }).min(1, { error: `${key} must be ${what}` });

export const s3RemoteSchema = z
  .object({
    /** The store's URL, for S3-compatible stores (MinIO, R2, ...); default: the AWS environment, or AWS. */
    endpoint: z
      .string({ error: "remotes.s3.endpoint must be the store's URL, e.g. http://127.0.0.1:9000" })
      .regex(/^https?:\/\/[^/\s]+/i, {
        error: "remotes.s3.endpoint must be an http:// or https:// URL, e.g. http://127.0.0.1:9000",
      })
      .optional(),
    region: nonEmpty("remotes.s3.region", "a region name, e.g. us-east-1").optional(),
    /** Bucket in the URL's path, not its host name (default: true with an endpoint, false for AWS). */
    force_path_style: z.boolean({ error: "remotes.s3.force_path_style must be true or false" }).optional(),
    access_key_id: nonEmpty("remotes.s3.access_key_id", "an access key id").optional(),
    secret_access_key: nonEmpty("remotes.s3.secret_access_key", "a secret access key").optional(),
    session_token: nonEmpty("remotes.s3.session_token", "a session token").optional(),
  })
  .superRefine((s3, ctx) => {
    requireBoth(
      ctx,
      s3,
      "remotes.s3",
      ["access_key_id", "secret_access_key"],
      "credentials in config.yaml take",
      ", for the AWS environment's",
    );
    if (s3.session_token && !s3.access_key_id) {
      ctx.addIssue({
        code: "custom",
        path: ["session_token"],
        message:
          "remotes.s3.session_token goes with remotes.s3.access_key_id and remotes.s3.secret_access_key",
      });
    }
  })
  .prefault({});

const pemPath = (key: string, what: string) =>
  z
    .string({ error: `${key} must be the path of ${what} file` })
    .min(1, { error: `${key} must be the path of ${what} file` });

// The remotes API (Dolt's sql-server `remotesapi:`): this server's databases served read-only as
// http(s):// remotes (src/http/remotes-api.ts). More keys come with cluster replication (tls_ca,
// server_name_urls, server_name_dns): each is one more optional key here, and any rule tying keys
// together goes in the superRefine below.
export const remotesApiSchema = z
  .object(
    {
      port: port("remotesapi.port"),
      /** Where to listen; left out, 127.0.0.1 (Dolt listens on every interface: see decisions §21). */
      address: z
        .string({
          error: "remotesapi.address must be a host name or IP address to listen on, e.g. 127.0.0.1",
        })
        .min(1, {
          error: "remotesapi.address must be a host name or IP address to listen on, e.g. 127.0.0.1",
        })
        .optional(),
      /** PEM private key and certificate: the API is served over HTTPS. */
      tls_key: pemPath("remotesapi.tls_key", "a PEM private key").optional(),
      tls_cert: pemPath("remotesapi.tls_cert", "a PEM certificate").optional(),
    },
    {
      error:
        "remotesapi must be a mapping with at least a port (remotesapi: {port: 50051}), or be left out to serve no remotes API",
    },
  )
  .superRefine((api, ctx) => {
    requireBoth(ctx, api, "remotesapi", ["tls_key", "tls_cert"], "HTTPS takes", ", for plain HTTP");
  });

const role = (key: string) =>
  z.enum(["primary", "standby"], { error: `${key} must be "primary" or "standby"` });
const epoch = (key: string) =>
  z
    .number({ error: `${key} must be a whole number (0 or more)` })
    .int({ error: `${key} must be a whole number (0 or more)` })
    .min(0, { error: `${key} must be a whole number (0 or more)` });

// Direct-to-standby replication (Dolt's sql-server `cluster:`; src/cluster/). The keys are Dolt's;
// `boostrap_role` / `boostrap_epoch` (sic) are accepted too, as the reference's TLS example spells them.
export const clusterSchema = z
  .object(
    {
      standby_remotes: z
        .array(
          z.object(
            {
              name: z
                .string({ error: "cluster.standby_remotes[].name must be a name, e.g. standby" })
                .regex(/^[A-Za-z0-9_.-]{1,63}$/, {
                  error:
                    "cluster.standby_remotes[].name may contain letters, digits, _ . and - (1-63), e.g. standby",
                }),
              remote_url_template: z
                .string({
                  error:
                    "cluster.standby_remotes[].remote_url_template must be the peer's URL with {database}, e.g. http://dolt-2.db:50051/{database}",
                })
                .regex(/^https?:\/\/[^/\s]+\/.*\{database\}/i, {
                  error:
                    "cluster.standby_remotes[].remote_url_template must be an http:// or https:// URL of the peer's cluster.remotesapi port with {database} in its path, e.g. http://dolt-2.db:50051/{database}",
                }),
            },
            {
              error:
                "each of cluster.standby_remotes must be a mapping {name, remote_url_template}, e.g. {name: standby, remote_url_template: http://dolt-2.db:50051/{database}}",
            },
          ),
          { error: "cluster.standby_remotes must be a list of {name, remote_url_template}" },
        )
        .min(1, { error: "cluster.standby_remotes must name at least one peer" }),
      bootstrap_role: role("cluster.bootstrap_role").optional(),
      bootstrap_epoch: epoch("cluster.bootstrap_epoch").optional(),
      boostrap_role: role("cluster.boostrap_role").optional(),
      boostrap_epoch: epoch("cluster.boostrap_epoch").optional(),
      remotesapi: z
        .object(
          {
            port: port("cluster.remotesapi.port"),
            /** Where to listen; left out, every interface (peers are on other hosts). */
            address: z
              .string({ error: "cluster.remotesapi.address must be a host name or IP address to listen on" })
              .min(1, { error: "cluster.remotesapi.address must be a host name or IP address to listen on" })
              .optional(),
            tls_key: pemPath("cluster.remotesapi.tls_key", "a PEM private key").optional(),
            tls_cert: pemPath("cluster.remotesapi.tls_cert", "a PEM certificate").optional(),
            /** CA certificates trusted for connections to peers (default: the system's roots). */
            tls_ca: pemPath("cluster.remotesapi.tls_ca", "a PEM CA certificates").optional(),
            server_name_urls: z
              .array(z.string().min(1), {
                error: "cluster.remotesapi.server_name_urls must be a list of URLs, e.g. [https://peer.svc]",
              })
              .default([]),
            server_name_dns: z
              .array(z.string().min(1), {
                error: "cluster.remotesapi.server_name_dns must be a list of DNS names, e.g. [peer.svc]",
              })
              .default([]),
          },
          { error: "cluster.remotesapi must be a mapping with at least a port, e.g. {port: 50051}" },
        )
        .superRefine((api, ctx) => {
          requireBoth(
            ctx,
            api,
            "cluster.remotesapi",
            ["tls_key", "tls_cert"],
            "TLS takes",
            ", for plain HTTP",
          );
          if ((api.server_name_urls.length > 0 || api.server_name_dns.length > 0) && !api.tls_ca) {
            ctx.addIssue({
              code: "custom",
              path: ["tls_ca"],
              message:
                "cluster.remotesapi.server_name_urls / server_name_dns check the names of certificates issued by cluster.remotesapi.tls_ca: set tls_ca too",
            });
          }
        }),
      /**
       * Opt-in: a standby promotes itself when the primary is gone (src/cluster/failover.ts). Left
       * out, a server never promotes itself.
       */
      automatic_failover: z
        .object(
          {
            after_secs: z
              .number({ error: "cluster.automatic_failover.after_secs must be a number of seconds, e.g. 10" })
              .int({
                error: "cluster.automatic_failover.after_secs must be a whole number of seconds, e.g. 10",
              })
              .min(4, {
                error:
                  "cluster.automatic_failover.after_secs must be at least 4: a primary that cannot reach its cluster makes itself read-only after half of it, and heartbeats come every second",
              })
              .default(10),
          },
          { error: "cluster.automatic_failover must be a mapping, e.g. {after_secs: 10}" },
        )
        .optional(),
    },
    {
      error:
        "cluster must be a mapping: {standby_remotes: [...], bootstrap_role, bootstrap_epoch, remotesapi: {port}}",
    },
  )
  .superRefine((cluster, ctx) => {
    if (cluster.automatic_failover && cluster.standby_remotes.length < 2)
      ctx.addIssue({
        code: "custom",
        path: ["automatic_failover"],
        message:
          "cluster.automatic_failover needs at least three servers (two standby_remotes): with two, a standby cannot tell a primary that is down from a network that is cut, and could make a second primary. Add a server, or remove automatic_failover (failover stays manual: dolt_assume_cluster_role)",
      });
  })
  .transform(({ boostrap_role, boostrap_epoch, ...cluster }) => ({
    ...cluster,
    bootstrap_role: cluster.bootstrap_role ?? boostrap_role ?? "primary",
    bootstrap_epoch: cluster.bootstrap_epoch ?? boostrap_epoch ?? 0,
  }));

export const configSchema = z.object({
  log_level: z
    .enum(["trace", "debug", "info", "warn", "error"], {
      error: "log_level must be one of trace, debug, info, warn, error",
    })
    .default("info"),
  data_dir: z.string({ error: "data_dir must be a directory path" }).min(1).default("./strata-data"),
  listener: z
    .object({
      host: z
        .string({ error: "listener.host must be a host name or IP address to listen on" })
        .min(1)
        .default("127.0.0.1"),
      port: port("listener.port").default(5432),
      /** PEM private key and certificate: clients that send SSLRequest get TLS. */
      tls_key: z
        .string({ error: "listener.tls_key must be the path of a PEM private key file" })
        .min(1, { error: "listener.tls_key must be the path of a PEM private key file" })
        .optional(),
      tls_cert: z
        .string({ error: "listener.tls_cert must be the path of a PEM certificate file" })
        .min(1, { error: "listener.tls_cert must be the path of a PEM certificate file" })
        .optional(),
      /** Refuse clients that did not negotiate TLS. */
      require_secure_transport: z
        .boolean({ error: "listener.require_secure_transport must be true or false" })
        .default(false),
      /** Sessions the front door serves at once. */
      max_connections: z
        .number({ error: "listener.max_connections must be a whole number of connections (1 or more)" })
        .int({ error: "listener.max_connections must be a whole number of connections (1 or more)" })
        .min(1, { error: "listener.max_connections must be a whole number of connections (1 or more)" })
        .default(100),
      /** Also listen on the Unix socket <dir>/.s.PGSQL.<port> (psql -h <dir> -p <port>). */
      unix_socket_directory: z
        .string({ error: "listener.unix_socket_directory must be the path of a directory, e.g. /run/strata" })
        .min(1, { error: "listener.unix_socket_directory must be the path of a directory, e.g. /run/strata" })
        .optional(),
    })
    .superRefine((listener, ctx) => {
      requireBoth(ctx, listener, "listener", ["tls_key", "tls_cert"], "TLS takes");
      if (listener.require_secure_transport && !listener.tls_key && !listener.tls_cert) {
        ctx.addIssue({
          code: "custom",
          path: ["require_secure_transport"],
          message:
            "listener.require_secure_transport: true refuses every client without TLS, so it needs listener.tls_key and listener.tls_cert",
        });
      }
    })
    .prefault({}),
  store: z
    .object({
      url: z
        .string({ error: "store.url must be a postgres:// connection URL" })
        .regex(/^postgres(ql)?:\/\//, {
          error:
            "store.url must be a postgres:// connection URL, e.g. postgres://user:pass@host:5432/postgres",
        })
        .optional(),
      bin_dir: z
        .string({ error: "store.bin_dir must be the directory holding initdb, postgres and pg_ctl" })
        .optional(),
      os_user: z.string({ error: "store.os_user must be an operating-system user name" }).optional(),
      user: name("store.user").default("postgres"),
      password: z.string({ error: "store.password must be a string" }).default("password"),
      settings: z
        .record(z.string(), z.union([z.string(), z.number(), z.boolean()]), {
          error: "store.settings must map PostgreSQL setting names to values",
        })
        .default({}),
    })
    .prefault({}),
  postgres_replication: postgresReplicationSchema.optional(),
  behavior: z
    .object({
      dolt_transaction_commit: z
        .boolean({ error: "behavior.dolt_transaction_commit must be true or false" })
        .optional(),
    })
    .prefault({}),
  // How remotes are reached (Strata's own). S3: anything left out comes from the AWS environment
  // (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID..., AWS_PROFILE).
  remotes: z
    .object({
      s3: s3RemoteSchema,
    })
    .prefault({}),
  // This server's databases as read-only http(s):// remotes for other Stratas (clone, fetch, pull).
  remotesapi: remotesApiSchema.optional(),
  // Hot standbys: this server's store streams to (or from) its peers', with roles and epochs.
  cluster: clusterSchema.optional(),
  // Doltgres's system variables (dolt_*), as their defaults: ALTER SYSTEM SET and SET override them.
  system_variables: z
    .record(z.string(), z.union([z.string(), z.number(), z.boolean()]), {
      error: "system_variables must map variable names (dolt_*) to values",
    })
    .superRefine((values, ctx) => {
      for (const [name, value] of Object.entries(values)) {
        const variable = findVariable(name);
        if (!variable) {
          ctx.addIssue({
            code: "custom",
            path: [name],
            message: `not a Strata system variable (known: ${VARIABLES.map((v) => v.name).join(", ")})`,
          });
          continue;
        }
        try {
          normalizeValue(variable, typeof value === "boolean" ? (value ? "1" : "0") : String(value));
        } catch (err) {
          ctx.addIssue({
            code: "custom",
            path: [name],
            message: `${(err as Error).message} (${(err as VariableError).hint})`,
          });
        }
      }
    })
    .default({}),
});

export type Config = z.infer<typeof configSchema>;
export type PostgresReplicationConfig = z.infer<typeof postgresReplicationSchema>;
export type RemotesApiConfig = z.infer<typeof remotesApiSchema>;
export type ClusterConfig = z.infer<typeof clusterSchema>;
