// `strata serve`: open the store, install the Strata schema in the replica database, open the
// listener, start replication, and stop all of it cleanly on SIGTERM/SIGINT. Beside the stream,
// two timers watch the primary: the sequence sync (replication does not carry sequence values)
// and the slot monitor (WAL the slot pins on the primary). Both only log; neither can stop the
// server.
import { mkdirSync } from "node:fs";
import type { LoadedConfig } from "./config/load.ts";
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

export interface RunningServer {
  listener: Listener;
  store: StoreHandle;
  replicator?: Replicator;
  sequenceSync?: SequenceSyncTimer;
  slotMonitor?: SlotMonitor;
  /** The remotes API (config.yaml's remotesapi.port): the databases as read-only http(s) remotes. */
  remotesApi?: RemotesApi;
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
  const store = await openStore(config, dataDir, log);
  let listener: Listener | undefined;
  let frontDoor: QueryRewriter | undefined;
  let replicator: Replicator | undefined;
  let sequenceSync: SequenceSyncTimer | undefined;
  let slotMonitor: SlotMonitor | undefined;
  let backgroundPush: { stop(): Promise<void> } | undefined;
  let remotesApi: RemotesApi | undefined;
  const stopTimers = async () => {
    await Promise.all([sequenceSync?.stop(), slotMonitor?.stop(), backgroundPush?.stop()]);
  };
  try {
    const database = config.postgres_replication?.postgres_database ?? "postgres";
    await ensureDatabase(store, database, log);
    const client = await connect(store.connectionConfig(database));
    let history: boolean;
    try {
      await installStrataSchema(client, database);
      await writeSettingDefaults(client, defaultSettings(config));
      const dropped = await setDatabaseRole(client, Boolean(config.postgres_replication));
      if (dropped > 0)
        log.warn(
          { database, changes: dropped },
          "this database now replicates from upstream: its uncommitted SQL changes (dolt_status) were dropped, since only the primary's transactions are commits here",
        );
      // Read through the store: ALTER SYSTEM SET dolt_transaction_commit persists over the config
      // file's value, and takes effect at the next start.
      const { rows } = await client.query<{ value: string }>(
        "SELECT dolt.setting('dolt_transaction_commit') AS value",
      );
      history = rows[0]?.value === "1";
    } finally {
      await client.end();
    }
    if (store.kind === "managed") await prepareNewDatabases(store, defaultSettings(config));
    if (config.postgres_replication) {
      replicator = new Replicator({
        config: config.postgres_replication,
        store,
        dataDir,
        history,
        log,
      });
      replicator.start();
      const stream = replicator;
      slotMonitor = new SlotMonitor({
        config: config.postgres_replication,
        log,
        onHealth: (health) => {
          stream.slotRetainedWalBytes =
            health.retainedBytes === null ? undefined : BigInt(Math.round(health.retainedBytes));
          stream.warning = health.lost
            ? "the replication slot was invalidated on the primary (see current_error once the stream stops)"
            : health.warning;
        },
      });
      slotMonitor.start();
      const intervalMs = config.postgres_replication.sequence_sync_interval_ms;
      if (intervalMs > 0) {
        sequenceSync = new SequenceSyncTimer({
          config: config.postgres_replication,
          replicaConfig: { ...store.connectionConfig(database), application_name: "strata sequence sync" },
          log,
          intervalMs,
        });
        sequenceSync.start();
      }
    }
    frontDoor = rewriter ?? new StrataRewriter(store, log);
    if (frontDoor instanceof StrataRewriter) backgroundPush = frontDoor.remotes.startBackgroundPush();
    if (config.remotesapi) remotesApi = await startRemotesApi(config.remotesapi, { store, dataDir, log });
    listener = await startListener(config.listener, store.endpoint, frontDoor, log);
    log.info(
      { host: listener.address.host, port: listener.address.port, database, data_dir: dataDir },
      "strata is ready for connections",
    );
  } catch (err) {
    await remotesApi?.close().catch(() => {});
    await stopTimers().catch(() => {});
    await replicator?.stop().catch(() => {});
    await store.stop().catch(() => {});
    throw err;
  }
  const running = listener;
  const frontDoorInUse = frontDoor;
  return {
    listener: running,
    store,
    replicator,
    sequenceSync,
    slotMonitor,
    remotesApi,
    stop: async () => {
      await running.close();
      await remotesApi?.close();
      if (frontDoorInUse instanceof StrataRewriter) await frontDoorInUse.close();
      await stopTimers();
      await replicator?.stop();
      await store.stop();
    },
  };
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
