// `strata serve`: open the store, install the Strata schema in the replica database, open the
// listener, start replication, and stop all of it cleanly on SIGTERM/SIGINT. Beside the stream,
// two timers watch the primary: the sequence sync (replication does not carry sequence values)
// and the slot monitor (WAL the slot pins on the primary). Both only log; neither can stop the
// server.
import { mkdirSync } from "node:fs";
import type pg from "pg";
import { ClusterController, type PrimaryServices } from "./cluster/controller.ts";
import type { LoadedConfig } from "./config/load.ts";
import type { Config } from "./config/schema.ts";
import { defaultSettings } from "./config/variables.ts";
import { connect } from "./db.ts";
import { type Listener, type QueryRewriter, startListener } from "./frontdoor/listener.ts";
import { StrataRewriter } from "./frontdoor/rewriter.ts";
import { installStrataSchema, setDatabaseRole, writeSettingDefaults } from "./history/install.ts";
import { type RemotesApi, startRemotesApi } from "./http/remotes-api.ts";
import type { Logger } from "./log.ts";
import { configureRemoteStorage } from "./remotes/storage.ts";
import { ensureDatabase, openStore, type StoreHandle } from "./store/store.ts";
import { Replicator } from "./upstream/replicator.ts";
import { SequenceSyncTimer } from "./upstream/sequences.ts";
import { SlotMonitor } from "./upstream/slot-health.ts";
import type { ClusterStandby } from "./upstream/standby-bound.ts";

export interface RunningServer {
  listener: Listener;
  store: StoreHandle;
  replicator?: Replicator;
  sequenceSync?: SequenceSyncTimer;
  slotMonitor?: SlotMonitor;
  /** The remotes API (config.yaml's remotesapi.port): the databases as read-only http(s) remotes. */
  remotesApi?: RemotesApi;
  /** This node's cluster controller (config.yaml's cluster:). */
  cluster?: ClusterController;
  stop(): Promise<void>;
}

export async function startServer(
  { config, dataDir }: LoadedConfig,
  log: Logger,
  rewriter?: QueryRewriter,
): Promise<RunningServer> {
  mkdirSync(dataDir, { recursive: true });
  // S3 remotes' endpoint and credentials (config.yaml's remotes.s3, else the AWS environment).
  configureRemoteStorage(config.remotes);
  // A cluster node first learns its role and its peers: a new standby's store is a copy of the primary's.
  const cluster = config.cluster ? new ClusterController(config.cluster, config, dataDir, log) : undefined;
  let store: StoreHandle | undefined;
  let listener: Listener | undefined;
  let frontDoor: QueryRewriter | undefined;
  let remotesApi: RemotesApi | undefined;
  const primary = new PrimaryServicesHolder(config, dataDir, log);
  if (cluster) primary.standbys = () => cluster.standbys();
  try {
    await cluster?.start();
    store = await openStore(config, dataDir, log, cluster?.storeOptions());
    await cluster?.storeStarted(store);
    const database = config.postgres_replication?.postgres_database ?? "postgres";
    // A standby's store is read-only: what is installed comes from its primary.
    const prepare = () => prepareStore(store!, database, config, log);
    if (cluster) await cluster.prepareStore(prepare);
    else await prepare();
    primary.history = await readsHistory(store, database);
    primary.store = store;
    frontDoor = rewriter ?? new StrataRewriter(store, log);
    if (frontDoor instanceof StrataRewriter) {
      primary.frontDoor = frontDoor;
      if (cluster) frontDoor.useCluster(cluster);
    }
    if (cluster) {
      cluster.attach({ services: primary });
      await cluster.startServicesIfPrimary();
    } else await primary.start();
    if (config.remotesapi) remotesApi = await startRemotesApi(config.remotesapi, { store, dataDir, log });
    listener = await startListener(config.listener, store.endpoint, frontDoor, log);
    const sessions = listener.sessions;
    cluster?.attach({ sessions: () => sessions() });
    log.info(
      {
        host: listener.address.host,
        port: listener.address.port,
        ...(listener.address.socket ? { socket: listener.address.socket } : {}),
        database,
        data_dir: dataDir,
        ...(cluster ? { cluster_role: cluster.role, cluster_epoch: cluster.epoch } : {}),
      },
      "strata is ready for connections",
    );
  } catch (err) {
    await remotesApi?.close().catch(() => {});
    await primary.stop().catch(() => {});
    await cluster?.stop().catch(() => {});
    await store?.stop().catch(() => {});
    throw err;
  }
  const running = listener;
  const frontDoorInUse = frontDoor;
  const runningStore = store;
  return {
    listener: running,
    store: runningStore,
    get replicator() {
      return primary.replicator;
    },
    get sequenceSync() {
      return primary.sequenceSync;
    },
    get slotMonitor() {
      return primary.slotMonitor;
    },
    remotesApi,
    cluster,
    stop: async () => {
      await running.close();
      await remotesApi?.close();
      await cluster?.stop();
      await primary.stop();
      if (frontDoorInUse instanceof StrataRewriter) await frontDoorInUse.close();
      await runningStore.stop();
    },
  };
}

/** The Strata schema, settings and database role, written into a store that takes writes. */
async function prepareStore(
  store: StoreHandle,
  database: string,
  config: Config,
  log: Logger,
): Promise<void> {
  await ensureDatabase(store, database, log);
  const client = await connect(store.connectionConfig(database));
  try {
    await installStrataSchema(client, database, log);
    await writeSettingDefaults(client, defaultSettings(config));
    const dropped = await setDatabaseRole(client, Boolean(config.postgres_replication));
    if (dropped > 0)
      log.warn(
        { database, changes: dropped },
        "this database now replicates from upstream: its uncommitted SQL changes (dolt_status) were dropped, since only the primary's transactions are commits here",
      );
  } finally {
    await client.end();
  }
  if (store.kind === "managed") await prepareNewDatabases(store, defaultSettings(config));
  await upgradeOtherDatabases(store, database, defaultSettings(config), log);
}

/**
 * The store's other Strata databases (made by CREATE DATABASE through the front door, and
 * branches) get this version's Strata schema and the config's setting defaults too: else they
 * kept the functions of the Strata that made them, which this one's code may not match. One that
 * cannot be brought up to date is reported and left as it is; the others and the server go on.
 */
async function upgradeOtherDatabases(
  store: StoreHandle,
  database: string,
  settings: Record<string, string>,
  log: Logger,
): Promise<void> {
  const admin = await connect(store.connectionConfig(database));
  let names: string[];
  try {
    const { rows } = await admin.query<{ datname: string }>(
      "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> $1 ORDER BY datname",
      [database],
    );
    names = rows.map((r) => r.datname);
  } finally {
    await admin.end();
  }
  for (const name of names) {
    let client: pg.Client;
    try {
      client = await connect(store.connectionConfig(name));
    } catch (err) {
      // On a store of the user's own, a database Strata may not enter is none of Strata's.
      log.debug({ database: name, err: (err as Error).message }, "not checked for a Strata schema");
      continue;
    }
    try {
      const { rows } = await client.query<{ strata: boolean }>(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'strata') AS strata",
      );
      if (!rows[0]?.strata) continue;
      const started = Date.now();
      await installStrataSchema(client, name, log);
      await writeSettingDefaults(client, settings);
      log.debug({ database: name, ms: Date.now() - started }, "Strata schema brought up to date");
    } catch (err) {
      log.warn(
        { database: name, err: (err as Error).message },
        "could not bring this database's Strata schema up to date: it keeps the functions of the Strata that made it until a start succeeds",
      );
    } finally {
      await client.end().catch(() => {});
    }
  }
}

/**
 * Whether replicated transactions become commits. Read through the store: ALTER SYSTEM SET
 * dolt_transaction_commit persists over the config file's value, and takes effect at the next start.
 */
async function readsHistory(store: StoreHandle, database: string): Promise<boolean> {
  const client = await connect(store.connectionConfig(database));
  try {
    const { rows } = await client.query<{ value: string }>(
      "SELECT dolt.setting('dolt_transaction_commit') AS value",
    );
    return rows[0]?.value === "1";
  } finally {
    await client.end();
  }
}

/**
 * What only a primary runs: replication from upstream with its two timers (the sequence sync,
 * since replication does not carry sequence values, and the slot monitor; both only log), and
 * the pushes to a remote. A cluster node starts and stops them as it gains and loses the role.
 */
class PrimaryServicesHolder implements PrimaryServices {
  store?: StoreHandle;
  history = false;
  frontDoor?: StrataRewriter;
  replicator?: Replicator;
  sequenceSync?: SequenceSyncTimer;
  slotMonitor?: SlotMonitor;
  /** A cluster node's standbys, which bound what is acknowledged upstream (upstream/standby-bound.ts). */
  standbys?: () => readonly ClusterStandby[];
  private backgroundPush?: { stop(): Promise<void> };

  constructor(
    private readonly config: Config,
    private readonly dataDir: string,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    const { config, store, log } = this;
    if (!store) return;
    const database = config.postgres_replication?.postgres_database ?? "postgres";
    if (config.postgres_replication) {
      const replicator = new Replicator({
        config: config.postgres_replication,
        store,
        dataDir: this.dataDir,
        history: this.history,
        log,
        standbys: this.standbys,
        onStreaming: () => this.slotMonitor?.checkSoon(),
      });
      this.replicator = replicator;
      replicator.start();
      this.slotMonitor = new SlotMonitor({
        config: config.postgres_replication,
        log,
        onHealth: (health) => {
          replicator.slotRetainedWalBytes =
            health.retainedBytes === null ? undefined : BigInt(Math.round(health.retainedBytes));
          replicator.warning = health.lost
            ? "the replication slot was invalidated on the primary (see current_error once the stream stops)"
            : health.warning;
        },
      });
      this.slotMonitor.start();
      const intervalMs = config.postgres_replication.sequence_sync_interval_ms;
      if (intervalMs > 0) {
        this.sequenceSync = new SequenceSyncTimer({
          config: config.postgres_replication,
          replicaConfig: { ...store.connectionConfig(database), application_name: "strata sequence sync" },
          log,
          intervalMs,
        });
        this.sequenceSync.start();
      }
    }
    this.backgroundPush = this.frontDoor?.remotes.startBackgroundPush();
  }

  async stop(): Promise<void> {
    await Promise.all([this.sequenceSync?.stop(), this.slotMonitor?.stop(), this.backgroundPush?.stop()]);
    await this.replicator?.stop();
    this.sequenceSync = this.slotMonitor = this.backgroundPush = this.replicator = undefined;
  }
}

/**
 * Databases created later (CREATE DATABASE through the front door) are copies of template1: give
 * it the Strata schema, and every database the search path that finds dolt_* names unqualified.
 * Only on the managed store, whose roles and templates are Strata's own.
 */
async function prepareNewDatabases(store: StoreHandle, settings: Record<string, string>): Promise<void> {
  const client = await connect(store.connectionConfig("template1"));
  try {
    await installStrataSchema(client, "template1");
    await writeSettingDefaults(client, settings);
    await setDatabaseRole(client, false);
    await client.query(`ALTER ROLE ALL SET search_path = "$user", public, dolt`);
  } finally {
    await client.end();
  }
}
