// `strata sync-sequences`: copy the primary's sequence values to the replica now (the same copy
// `strata serve` runs every sequence_sync_interval_ms; see upstream/sequences.ts). It works on
// the store of a Strata that is running and never starts the managed store itself: starting it
// while `strata serve` owns it would stop the serving postmaster as an orphan.
import type pg from "pg";
import type { LoadedConfig } from "../config/load.ts";
import { connect } from "../db.ts";
import { createLogger } from "../log.ts";
import { attachRunningStore } from "../store/store.ts";
import { formatSequenceSummary, syncSequences } from "../upstream/sequences.ts";
import { upstreamConnectionConfig } from "../upstream/setup.ts";

export async function syncSequencesCommand({ config, dataDir }: LoadedConfig): Promise<void> {
  const cfg = config.postgres_replication;
  if (!cfg) {
    throw new Error(
      "the config has no postgres_replication section, so there is no primary to copy sequences from; pass the config of the replica with --config",
    );
  }
  const log = createLogger(config.log_level);
  const store = attachRunningStore(config, dataDir);
  const database = cfg.postgres_database;
  let replica: pg.Client;
  try {
    replica = await connect({
      ...store.connectionConfig(database),
      application_name: "strata sync-sequences",
    });
  } catch (err) {
    const e = err as { code?: string; message: string };
    if (e.code === "3D000") {
      throw new Error(
        `the replica database "${database}" does not exist on the store yet: start \`strata serve\` with this config first (it creates it), then run sync-sequences again`,
      );
    }
    if (store.kind === "managed" && (e.code === "ENOENT" || e.code === "ECONNREFUSED")) {
      throw new Error(
        `the managed store in ${dataDir} is not accepting connections (${e.message}): start \`strata serve\` with this config first, then run sync-sequences again`,
      );
    }
    throw new Error(
      `cannot connect to the store${config.store.url ? " (store.url)" : ` in ${dataDir}`}: ${e.message}; check that \`strata serve\` is running with this config${config.store.url ? " and that store.url is right" : ""}`,
    );
  }
  try {
    let primary: pg.Client;
    try {
      primary = await connect({
        ...upstreamConnectionConfig(cfg),
        application_name: "strata sync-sequences",
      });
    } catch (err) {
      throw new Error(
        `cannot connect to the primary ${cfg.postgres_server_address}:${cfg.postgres_port} (database ${cfg.postgres_database}, user ${cfg.postgres_user}): ${(err as Error).message}; check that it is running and the postgres_replication connection keys`,
      );
    }
    try {
      const summary = await syncSequences(primary, replica, log);
      process.stdout.write(`synced sequences: ${formatSequenceSummary(summary)}\n`);
      if (summary.failed.length) {
        throw new Error(
          `${summary.failed.length} sequence(s) could not be copied: ${summary.failed.map((f) => `${f.sequence} (${f.error})`).join("; ")}`,
        );
      }
    } finally {
      await primary.end().catch(() => {});
    }
  } finally {
    await replica.end().catch(() => {});
  }
}
