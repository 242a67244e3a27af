// A connection to the replica database of a Strata that is running, for one-shot commands
// (sync-sequences, log, diff, status). It never starts the managed store: starting it while
// `strata serve` owns it would stop the serving postmaster as an orphan, and starting it while
// Strata is stopped would race a `strata serve` started meanwhile. So the commands need a running
// Strata (or a store.url store), and say so when there is none.
import type pg from "pg";
import type { LoadedConfig } from "../config/load.ts";
import { connect } from "../db.ts";
import { attachRunningStore } from "../store/store.ts";

/** The store database Strata keeps its replica (and history) in. */
export function replicaDatabase({ config }: LoadedConfig): string {
  return config.postgres_replication?.postgres_database ?? "postgres";
}

/**
 * Connect to the replica database on the running store; `command` names the command in the
 * remedies. `extra` is added to the connection config (session settings, application name).
 */
export async function connectRunningReplica(
  loaded: LoadedConfig,
  command: string,
  extra: Partial<pg.ClientConfig> = {},
): Promise<pg.Client> {
  const { config, dataDir } = loaded;
  const store = attachRunningStore(config, dataDir);
  const database = replicaDatabase(loaded);
  try {
    return await connect({
      ...store.connectionConfig(database),
      application_name: `strata ${command}`,
      ...extra,
    });
  } catch (err) {
    const e = err as { code?: string; message: string };
    if (e.code === "3D000") {
      throw new Error(
        `the replica database "${database}" does not exist on the store yet: start \`strata serve\` with this config first (it creates it), then run ${command} again`,
      );
    }
    if (store.kind === "managed" && (e.code === "ENOENT" || e.code === "ECONNREFUSED")) {
      throw new Error(
        `the managed store in ${dataDir} is not accepting connections (${e.message}): start \`strata serve\` with this config first, then run ${command} again`,
      );
    }
    throw new Error(
      `cannot connect to the store${config.store.url ? " (store.url)" : ` in ${dataDir}`}: ${e.message}; check that \`strata serve\` is running with this config${config.store.url ? " and that store.url is right" : ""}`,
    );
  }
}

/**
 * Connect for a command that reads history: as connectRunningReplica, in UTC (dates in JSON
 * output do not depend on the store's time zone), after checking that the Strata schema is there.
 */
export async function connectHistoryReader(loaded: LoadedConfig, command: string): Promise<pg.Client> {
  const client = await connectRunningReplica(loaded, command, { options: "-c TimeZone=UTC" });
  try {
    const { rows } = await client.query<{ installed: boolean }>(
      "SELECT to_regclass('strata.commits') IS NOT NULL AND to_regclass('dolt.dolt_log') IS NOT NULL AS installed",
    );
    if (!rows[0]?.installed) {
      throw new Error(
        `the database "${replicaDatabase(loaded)}" on the store has no Strata history: start \`strata serve\` with this config first (it installs it), then run ${command} again`,
      );
    }
  } catch (err) {
    await client.end().catch(() => {});
    throw err;
  }
  return client;
}
