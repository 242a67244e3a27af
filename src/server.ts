// `strata serve`: open the store, install the Strata schema in the replica database, open the
// listener, start replication, and stop all of it cleanly on SIGTERM/SIGINT.
import { mkdirSync } from "node:fs";
import type { LoadedConfig } from "./config/load.ts";
import { connect } from "./db.ts";
import { type Listener, startListener } from "./frontdoor/passthrough.ts";
import { installStrataSchema } from "./history/install.ts";
import type { Logger } from "./log.ts";
import { ensureDatabase, openStore, type StoreHandle } from "./store/store.ts";
import { Replicator } from "./upstream/replicator.ts";

export interface RunningServer {
  listener: Listener;
  store: StoreHandle;
  replicator?: Replicator;
  stop(): Promise<void>;
}

export async function startServer({ config, dataDir }: LoadedConfig, log: Logger): Promise<RunningServer> {
  mkdirSync(dataDir, { recursive: true });
  const store = await openStore(config, dataDir, log);
  let listener: Listener | undefined;
  let replicator: Replicator | undefined;
  try {
    const database = config.postgres_replication?.postgres_database ?? "postgres";
    await ensureDatabase(store, database, log);
    const client = await connect(store.connectionConfig(database));
    try {
      await installStrataSchema(client, database);
    } finally {
      await client.end();
    }
    if (config.postgres_replication) {
      replicator = new Replicator({
        config: config.postgres_replication,
        store,
        dataDir,
        // A replica records a commit per replicated transaction unless told otherwise.
        history: config.behavior.dolt_transaction_commit ?? true,
        log,
      });
      replicator.start();
    }
    listener = await startListener(config.listener.host, config.listener.port, store.endpoint, log);
    log.info(
      { host: listener.address.host, port: listener.address.port, database, data_dir: dataDir },
      "strata is ready for connections",
    );
  } catch (err) {
    await replicator?.stop().catch(() => {});
    await store.stop().catch(() => {});
    throw err;
  }
  const running = listener;
  return {
    listener: running,
    store,
    replicator,
    stop: async () => {
      await running.close();
      await replicator?.stop();
      await store.stop();
    },
  };
}
