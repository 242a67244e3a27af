// `strata drop-slot`: remove Strata's replication slot and publication from the primary, e.g.
// when a replica is retired (its slot would pin WAL forever) or before re-copying a replica
// whose slot was lost. Idempotent: what is already gone is reported, not an error. A slot in use
// is refused: dropping it under a running Strata would break its stream, and the walsender pid
// tells the user which process holds it.
import pg from "pg";
import type { Config } from "../config/schema.ts";
import { connect } from "../db.ts";
import { upstreamConnectionConfig } from "../upstream/setup.ts";

export interface DropSlotOptions {
  /** Terminate the walsender holding the slot instead of refusing. */
  force?: boolean;
  /** Where the report lines go (default stdout). */
  out?: (line: string) => void;
}

interface SlotRow {
  slot_type: string;
  plugin: string | null;
  database: string | null;
  active: boolean;
  active_pid: number | null;
}

const FORCE_WAIT_MS = 10_000;

export async function dropSlotCommand(config: Config, options: DropSlotOptions = {}): Promise<void> {
  const cfg = config.postgres_replication;
  if (!cfg) {
    throw new Error(
      "the config has no postgres_replication section, so there is no slot to drop; pass the config of the replica with --config",
    );
  }
  const out = options.out ?? ((line: string) => process.stdout.write(`${line}\n`));
  const where = `${cfg.postgres_server_address}:${cfg.postgres_port}`;
  const slot = cfg.slot_name;
  const publication = cfg.publication_name ?? cfg.slot_name;
  let client: pg.Client;
  try {
    client = await connect({ ...upstreamConnectionConfig(cfg), application_name: "strata drop-slot" });
  } catch (err) {
    throw new Error(
      `cannot connect to the primary ${where} (database ${cfg.postgres_database}, user ${cfg.postgres_user}): ${(err as Error).message}; check that it is running and the postgres_replication connection keys`,
    );
  }
  try {
    const readSlot = async () =>
      (
        await client.query<SlotRow>(
          "SELECT slot_type, plugin, database, active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
          [slot],
        )
      ).rows[0];
    let row = await readSlot();
    if (!row) {
      out(`replication slot "${slot}" does not exist on ${where}: nothing to drop`);
    } else {
      if (
        row.slot_type !== "logical" ||
        row.plugin !== "pgoutput" ||
        row.database !== cfg.postgres_database
      ) {
        throw new Error(
          `replication slot "${slot}" on ${where} is not Strata's (a ${row.slot_type} slot, plugin ${row.plugin ?? "none"}, database ${row.database ?? "none"}; Strata's is a logical pgoutput slot in ${cfg.postgres_database}); it was left alone: check postgres_replication.slot_name, or drop it by hand with SELECT pg_drop_replication_slot('${slot}')`,
        );
      }
      if (row.active && row.active_pid !== null) {
        const pid = row.active_pid;
        const holder = await describeBackend(client, pid);
        if (!options.force) {
          throw new Error(
            `replication slot "${slot}" is in use by the walsender with pid ${pid} on ${where}${holder}: a running Strata is streaming from it. Stop that Strata first (SIGTERM), then run strata drop-slot again`,
          );
        }
        await client.query("SELECT pg_terminate_backend($1)", [pid]);
        out(`terminated the walsender with pid ${pid}${holder} that held replication slot "${slot}"`);
        const deadline = Date.now() + FORCE_WAIT_MS;
        // The walsender exits asynchronously; the slot is released when it has.
        for (;;) {
          row = await readSlot();
          if (!row?.active || Date.now() > deadline) break;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      if (row) {
        try {
          await client.query("SELECT pg_drop_replication_slot($1)", [slot]);
          out(`dropped replication slot "${slot}" on ${where}`);
        } catch (err) {
          throw explainDropError(
            err,
            `replication slot "${slot}"`,
            `SELECT pg_drop_replication_slot('${slot}')`,
          );
        }
      } else {
        out(`replication slot "${slot}" does not exist on ${where}: nothing to drop`);
      }
    }
    const pub = await client.query("SELECT 1 FROM pg_publication WHERE pubname = $1", [publication]);
    if (cfg.publication_name !== undefined && cfg.publication_name !== cfg.slot_name) {
      // A publication named in the config may be the user's own, shared with other subscribers.
      out(
        `publication "${publication}" is named by postgres_replication.publication_name, so it is left in place (other subscribers may use it); drop it yourself if it is Strata's alone: DROP PUBLICATION ${pg.escapeIdentifier(publication)};`,
      );
    } else if (!pub.rowCount) {
      out(
        `publication "${publication}" does not exist in database ${cfg.postgres_database} on ${where}: nothing to drop`,
      );
    } else {
      const sql = `DROP PUBLICATION IF EXISTS ${pg.escapeIdentifier(publication)}`;
      try {
        await client.query(sql);
      } catch (err) {
        throw explainDropError(err, `publication "${publication}"`, `${sql};`);
      }
      out(`dropped publication "${publication}" in database ${cfg.postgres_database} on ${where}`);
    }
  } finally {
    await client.end().catch(() => {});
  }
}

async function describeBackend(client: pg.Client, pid: number): Promise<string> {
  const { rows } = await client.query(
    "SELECT application_name, client_addr::text AS addr FROM pg_stat_activity WHERE pid = $1",
    [pid],
  );
  const r = rows[0];
  if (!r) return "";
  const parts = [r.application_name && `application ${r.application_name}`, r.addr && `client ${r.addr}`];
  const text = parts.filter(Boolean).join(", ");
  return text ? ` (${text})` : "";
}

function explainDropError(err: unknown, what: string, byHand: string): Error {
  const e = err as { code?: string; message: string };
  if (e.code === "42501") {
    return new Error(
      `cannot drop ${what}: ${e.message}; run strata drop-slot with a postgres_user that is a superuser, has the REPLICATION attribute or owns the publication, or run as such a user: ${byHand}`,
    );
  }
  if (e.code === "55006") {
    return new Error(
      `cannot drop ${what}: ${e.message}; something is streaming from it again: stop the Strata that uses it, then run strata drop-slot again`,
    );
  }
  return new Error(`cannot drop ${what}: ${e.message}; drop it by hand on the primary: ${byHand}`);
}
