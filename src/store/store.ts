// The store: the real PostgreSQL that holds every Strata database. Either a private cluster that
// Strata initialises and runs inside its data directory (the default), or an existing server
// named by `store.url`. Everything above this module only sees `StoreHandle`.
import { existsSync, statfsSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import type { Config } from "../config/schema.ts";
import { defaultSettings } from "../config/variables.ts";
import { connect } from "../db.ts";
import type { Logger } from "../log.ts";
import { findPgBinaries, supportsLz4 } from "./binaries.ts";
import { steadyMaxWalMb } from "./bulk-load.ts";
import {
  type ClusterSpec,
  clusterPaths,
  initCluster,
  isInitialised,
  startCluster,
  stopCluster,
} from "./cluster.ts";
import { storeOsUser } from "./os-user.ts";

/** Where a raw client connection (the listener's pass-through) goes. */
export type StoreEndpoint = { path: string } | { host: string; port: number };

export interface StoreHandle {
  kind: "managed" | "external";
  endpoint: StoreEndpoint;
  /** The managed store's server binaries (its pg_dump and pg_restore match it). */
  binDir?: string;
  /** The managed store's cluster (cluster roles stop, rewind and restart it). */
  managed?: ClusterSpec;
  connectionConfig(database: string): pg.ClientConfig;
  stop(): Promise<void>;
}

// Strata's own connections to the store: the store's triggers let their writes through (replicated
// tables refuse clients' writes; the working set captures clients' writes only).
const INTERNAL_WRITER = "-c strata.applying=on";

// The managed store listens only on its unix socket; the port just names the socket file.
const MANAGED_SOCKET_PORT = 5432;

export interface OpenStoreOptions {
  /**
   * Makes the managed store when there is none (default: initdb); resolves true when it made one.
   * A cluster standby takes a base backup from its primary instead.
   */
  initialise?: (spec: ClusterSpec) => Promise<boolean>;
  /** Runs before every start of the managed store (a cluster node writes its role settings). */
  beforeStart?: (spec: ClusterSpec) => void;
}

export async function openStore(
  config: Config,
  dataDir: string,
  log: Logger,
  options: OpenStoreOptions = {},
): Promise<StoreHandle> {
  if (config.store.url) return openExternalStore(config.store.url);
  const spec = managedStoreSpec(config, dataDir);
  if (await (options.initialise ?? initCluster)(spec)) {
    log.info(
      { pgdata: clusterPaths(spec).pgdata, binaries: spec.bin.dir, os_user: spec.osUser?.name },
      "initialised the managed store",
    );
  }
  preferLz4(spec);
  roomForWal(spec);
  options.beforeStart?.(spec);
  const { paths } = await startCluster(spec, (recovery) => {
    if (recovery === "stopped-orphan")
      log.warn(
        "found the store's postmaster still running from a previous run (Strata was killed); stopping it to start it again",
      );
    else log.warn("removed a stale postmaster.pid left by a previous run");
  });
  log.info(
    {
      socket_dir: paths.socketDir,
      version: spec.bin.major,
      toast_compression: spec.settings?.default_toast_compression ?? "pglz",
      max_wal_size: spec.settings?.max_wal_size,
    },
    "managed store started",
  );
  const handle = managedStoreHandle(paths.socketDir, spec.superuser, spec.password, async () => {
    await stopCluster(spec);
    log.info("managed store stopped");
  });
  return { ...handle, binDir: spec.bin.dir, managed: spec };
}

/** The managed store's cluster: where it lives, who runs it, and the settings it starts with. */
export function managedStoreSpec(config: Config, dataDir: string): ClusterSpec {
  return {
    root: join(dataDir, "store"),
    bin: findPgBinaries(config.store.bin_dir),
    osUser: storeOsUser(config.store.os_user),
    superuser: config.store.user,
    password: config.store.password,
    port: MANAGED_SOCKET_PORT,
    listenAddresses: "",
    settings: {
      // Logical decoding for downstream consumers; checksums (set at initdb) + wal_log_hints for pg_rewind.
      wal_level: "logical",
      max_wal_senders: 10,
      max_replication_slots: 10,
      wal_log_hints: true,
      // Strata's system variables: the config file's values are the defaults ALTER SYSTEM overrides.
      ...defaultSettings(config),
      ...config.store.settings,
    },
  };
}

/**
 * TOAST compression with lz4 where the server is built with it, unless store.settings chooses:
 * wide values (a snapshot's large text columns, history's row images) are compressed on every
 * write, and pglz spends several times lz4's CPU on them (docs/decisions.md §9).
 */
function preferLz4(spec: ClusterSpec) {
  const settings = spec.settings ?? {};
  if ("default_toast_compression" in settings) return;
  if (supportsLz4(spec.bin, clusterPaths(spec).pgdata))
    spec.settings = { ...settings, default_toast_compression: "lz4" };
}

/** max_wal_size for history's WAL volume (steadyMaxWalMb), unless store.settings chooses. */
function roomForWal(spec: ClusterSpec) {
  const settings = spec.settings ?? {};
  if ("max_wal_size" in settings) return;
  const { bavail, bsize } = statfsSync(clusterPaths(spec).pgdata);
  spec.settings = { ...settings, max_wal_size: `${steadyMaxWalMb(bavail * bsize)}MB` };
}

/** A managed store reached through its unix socket in `socketDir`. */
function managedStoreHandle(
  socketDir: string,
  user: string,
  password: string,
  stop: () => Promise<void>,
): StoreHandle {
  return {
    kind: "managed",
    endpoint: { path: join(socketDir, `.s.PGSQL.${MANAGED_SOCKET_PORT}`) },
    connectionConfig: (database) => ({
      host: socketDir,
      port: MANAGED_SOCKET_PORT,
      user,
      password,
      database,
      options: INTERNAL_WRITER,
    }),
    stop,
  };
}

/**
 * The store of a Strata that is already serving, for one-shot commands (sync-sequences): never
 * starts the managed cluster, since a second start would take the serving postmaster for an
 * orphan and stop it. Its stop() does nothing. Throws when the managed store is not running;
 * whether it accepts connections is for the caller's first connection to find out.
 */
export function attachRunningStore(config: Config, dataDir: string): StoreHandle {
  if (config.store.url) return openExternalStore(config.store.url);
  const root = join(dataDir, "store");
  const paths = clusterPaths({ root });
  if (!isInitialised({ root }) || !existsSync(join(paths.pgdata, "postmaster.pid"))) {
    throw new Error(
      `the managed store in ${dataDir} is not running (${isInitialised({ root }) ? "no postmaster.pid" : "no store initialised there"}): start \`strata serve\` with this config first, then run the command again`,
    );
  }
  return managedStoreHandle(paths.socketDir, config.store.user, config.store.password, async () => {});
}

function openExternalStore(url: string): StoreHandle {
  const parsed = new URL(url);
  const host = decodeURIComponent(parsed.hostname || "localhost");
  const port = Number(parsed.port || 5432);
  return {
    kind: "external",
    endpoint: { host, port },
    connectionConfig: (database) => ({
      host,
      port,
      user: decodeURIComponent(parsed.username || "postgres"),
      password: decodeURIComponent(parsed.password),
      database,
      options: INTERNAL_WRITER,
    }),
    stop: async () => {},
  };
}

/** Create `database` on the store if it does not exist. */
export async function ensureDatabase(store: StoreHandle, database: string, log: Logger): Promise<void> {
  const client = await connect(store.connectionConfig("postgres"));
  try {
    const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [database]);
    if (!rowCount) {
      await client.query(`CREATE DATABASE ${pg.escapeIdentifier(database)}`);
      log.info({ database }, "created the replica database on the store");
    }
  } finally {
    await client.end();
  }
}
