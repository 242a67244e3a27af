// `strata setup-primary [--uninstall] [--print-sql]`: the DDL event trigger on the primary
// (src/upstream/ddl-trigger.ts). Idempotent both ways; run as a superuser of the primary, since
// only superusers may create event triggers.
import type { Config } from "../config/schema.ts";
import { connect } from "../db.ts";
import {
  installFollowUpStatements,
  installStatements,
  uninstallStatements,
} from "../upstream/ddl-trigger.ts";
import { upstreamConnectionConfig } from "../upstream/setup.ts";

export interface SetupPrimaryOptions {
  uninstall: boolean;
  /** Print the SQL instead of running it (for a DBA to run as a superuser). */
  printSql?: boolean;
}

export async function setupPrimary(config: Config, opts: SetupPrimaryOptions): Promise<void> {
  const statements = opts.uninstall ? uninstallStatements() : installStatements();
  // Run on their own after the transaction (psql runs each statement so, unless given -1).
  const followUps = opts.uninstall ? [] : installFollowUpStatements();
  if (opts.printSql) {
    process.stdout.write(`${[...statements, ...followUps].map((s) => `${s.trim()};`).join("\n\n")}\n`);
    return;
  }
  const cfg = config.postgres_replication;
  if (!cfg) {
    throw new Error(
      "the config has no postgres_replication section, so there is no primary to set up; add it (see the README's configuration reference)",
    );
  }
  const where = `${cfg.postgres_server_address}:${cfg.postgres_port}/${cfg.postgres_database}`;
  const client = await connect(upstreamConnectionConfig(cfg)).catch((err: Error) => {
    throw new Error(`cannot connect to the primary ${where} as ${cfg.postgres_user}: ${err.message}`);
  });
  try {
    const { rows } = await client.query<{ rolsuper: boolean }>(
      "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
    );
    if (!rows[0]?.rolsuper) {
      throw new Error(
        `user ${cfg.postgres_user} is not a superuser on ${where}, and only superusers can ${opts.uninstall ? "drop" : "create"} event triggers; run \`strata setup-primary${opts.uninstall ? " --uninstall" : ""} --print-sql\` and have a superuser run its output with psql on that database`,
      );
    }
    await client.query("BEGIN");
    for (const sql of statements) await client.query(sql);
    await client.query("COMMIT");
    for (const sql of followUps)
      await client.query(sql).catch((err: Error) => {
        throw new Error(
          `installed Strata's DDL event trigger on ${where}, but could not give every partition its truncate trigger (${err.message}); run strata setup-primary again`,
        );
      });
    if (opts.uninstall) {
      // The schema goes too when nothing else lives in it.
      await client.query("DROP SCHEMA IF EXISTS strata").catch(() => {});
      process.stdout.write(`removed Strata's DDL event trigger from ${where}\n`);
    } else {
      process.stdout.write(
        `installed Strata's DDL event trigger on ${where}: DDL on published tables now reaches the replica in order (undo with strata setup-primary --uninstall)\n`,
      );
    }
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  } finally {
    await client.end().catch(() => {});
  }
}
