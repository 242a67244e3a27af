// `strata sync-sequences`: copy the primary's sequence values to the replica now (the same copy
// `strata serve` runs every sequence_sync_interval_ms; see upstream/sequences.ts). It works on
// the store of a Strata that is running and never starts the managed store itself (see
// replica-client.ts).
import type pg from "pg";
import type { LoadedConfig } from "../config/load.ts";
import { connect } from "../db.ts";
import { createLogger } from "../log.ts";
import { formatSequenceSummary, syncSequences } from "../upstream/sequences.ts";
import { upstreamConnectionConfig } from "../upstream/setup.ts";
import { connectRunningReplica } from "./replica-client.ts";

export async function syncSequencesCommand(loaded: LoadedConfig): Promise<void> {
  const { config } = loaded;
  const cfg = config.postgres_replication;
  if (!cfg) {
    throw new Error(
      "the config has no postgres_replication section, so there is no primary to copy sequences from; pass the config of the replica with --config",
    );
  }
  const log = createLogger(config.log_level);
  const replica = await connectRunningReplica(loaded, "sync-sequences");
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
