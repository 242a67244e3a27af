// Copying one store database into a new one, as a branch is made: pg_dump's custom format piped
// straight into pg_restore (no file in between), so the copy is one consistent snapshot of the
// source — tables, history, working set, sequences, functions, grants — taken while the source
// keeps taking writes. CREATE DATABASE ... TEMPLATE would copy files, faster, but it needs the
// source to have no other session, which a live database never has (decisions §20).
import { spawn } from "node:child_process";
import pg from "pg";
import { connect } from "../db.ts";
import { findClientProgram } from "../store/binaries.ts";
import type { StoreHandle } from "../store/store.ts";
import { BranchError } from "./names.ts";

/** The end of a child's stderr kept for the error message. */
const STDERR_TAIL = 4_000;

/**
 * Create `target` as a copy of `source` (both on `store`), with the source's database-level
 * settings. On any failure the target is dropped again and the error says what failed.
 */
export async function copyDatabase(store: StoreHandle, source: string, target: string): Promise<void> {
  const pgDump = findClientProgram("pg_dump", store.binDir);
  const pgRestore = findClientProgram("pg_restore", store.binDir);
  const admin = await connect(store.connectionConfig("postgres"));
  try {
    // template0: template1 carries the Strata schema for CREATE DATABASE, which the dump brings.
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(target)} TEMPLATE template0`);
    try {
      // The table ids are read in the snapshot pg_dump copies (exported from this transaction,
      // held open until the dump is done), so a table made or renamed meanwhile cannot be missed.
      const reader = await connect(store.connectionConfig(source));
      let tables: TableIdentity[];
      let namedColumns: TableByOid[];
      try {
        await reader.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
        const { rows } = await reader.query<{ snapshot: string }>("SELECT pg_export_snapshot() AS snapshot");
        tables = await tableIdentities(reader);
        namedColumns = await tablesWithColumnNames(reader);
        await pipeDump(store, pgDump, pgRestore, source, target, rows[0].snapshot);
      } finally {
        await reader.end().catch(() => {});
      }
      await copyDatabaseSettings(admin, source, target);
      await rebindTables(store, target, tables, namedColumns);
    } catch (err) {
      await admin
        .query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(target)} WITH (FORCE)`)
        .catch(() => {});
      throw err;
    }
  } finally {
    await admin.end().catch(() => {});
  }
}

interface TableIdentity {
  tid: string;
  schema: string;
  name: string;
}

/** The source's tables by their ids (strata.table_ids), by name: oids do not survive a copy. */
async function tableIdentities(client: pg.Client): Promise<TableIdentity[]> {
  const { rows } = await client.query<TableIdentity>(
    `SELECT t.tid, n.nspname AS schema, c.relname AS name
       FROM strata.table_ids t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace`,
  );
  return rows;
}

interface TableByOid {
  relid: string;
  schema: string;
  name: string;
}

/** The source's tables whose column names history recorded (strata.column_names), by oid. */
async function tablesWithColumnNames(client: pg.Client): Promise<TableByOid[]> {
  const { rows: has } = await client.query<{ has: boolean }>(
    "SELECT to_regclass('strata.column_names') IS NOT NULL AS has",
  );
  if (!has[0]?.has) return []; // a database an older Strata made, not upgraded since
  const { rows } = await client.query<TableByOid>(
    `SELECT c.oid::text AS relid, n.nspname AS schema, c.relname AS name
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.oid IN (SELECT relid FROM strata.column_names)`,
  );
  return rows;
}

/**
 * What Strata keeps by table oid, rebound to the copy's oids: table ids (and a database identity
 * of its own, so that tables made in the copy get ids no other database gives), the working set's
 * tables (found by the name they were recorded under), the column names history last recorded
 * (which a rename is found against), and the capture triggers.
 */
async function rebindTables(
  store: StoreHandle,
  target: string,
  tables: TableIdentity[],
  namedColumns: TableByOid[],
): Promise<void> {
  const client = await connect(store.connectionConfig(target));
  try {
    await client.query("BEGIN");
    await client.query("UPDATE strata.database_identity SET id = replace(gen_random_uuid()::text, '-', '')");
    await client.query("DELETE FROM strata.table_ids");
    await client.query(
      `INSERT INTO strata.table_ids (relid, tid)
       SELECT to_regclass(format('%I.%I', t.schema, t.name))::oid, t.tid
         FROM jsonb_to_recordset($1::jsonb) AS t(tid text, schema text, name text)
        WHERE to_regclass(format('%I.%I', t.schema, t.name)) IS NOT NULL`,
      [JSON.stringify(tables)],
    );
    if (namedColumns.length > 0) await rebindColumnNames(client, namedColumns);
    // The capture triggers name their table's root by oid too (a copy made by a Strata before
    // 2026-11-25 has no strata.rebind_capture; its triggers stay as they were).
    const { rows } = await client.query<{ has: boolean }>(
      "SELECT to_regprocedure('strata.rebind_capture()') IS NOT NULL AS has",
    );
    if (rows[0]?.has) await client.query("SELECT strata.rebind_capture()");
    for (const table of ["strata.working_changes", "strata.working_schema_changes"]) {
      await client.query(
        `UPDATE ${table} w SET relid = r.oid
           FROM (SELECT DISTINCT rel, to_regclass(format('%I.%I', split_part(rel, '.', 1), substr(rel, strpos(rel, '.') + 1)))::oid AS oid
                   FROM ${table}) r
          WHERE r.rel = w.rel AND r.oid IS NOT NULL AND w.relid <> r.oid`,
      );
    }
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  } finally {
    await client.end().catch(() => {});
  }
}

/** Column names history recorded, moved to the copy's oids (deleted first: an old oid may be a new one's too). */
async function rebindColumnNames(client: pg.Client, tables: TableByOid[]): Promise<void> {
  const { rows } = await client.query<{ relid: string; attnum: number; name: string }>(
    "DELETE FROM strata.column_names RETURNING relid::text, attnum, name",
  );
  await client.query(
    `INSERT INTO strata.column_names (relid, attnum, name)
     SELECT to_regclass(format('%I.%I', t.schema, t.name))::oid, c.attnum, c.name
       FROM jsonb_to_recordset($1::jsonb) AS c(relid text, attnum int2, name text)
       JOIN jsonb_to_recordset($2::jsonb) AS t(relid text, schema text, name text) ON t.relid = c.relid
      WHERE to_regclass(format('%I.%I', t.schema, t.name)) IS NOT NULL`,
    [JSON.stringify(rows), JSON.stringify(tables)],
  );
}

async function copyDatabaseSettings(admin: pg.Client, source: string, target: string): Promise<void> {
  const { rows } = await admin.query<{ name: string; value: string }>(
    `SELECT split_part(c, '=', 1) AS name, substr(c, strpos(c, '=') + 1) AS value
       FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) c
      WHERE d.datname = $1 AND s.setrole = 0`,
    [source],
  );
  for (const { name, value } of rows) {
    // search_path's value is a list as written ("$user", public, dolt): set as is, not quoted.
    const setting = name === "search_path" ? value : pg.escapeLiteral(value);
    await admin.query(
      `ALTER DATABASE ${pg.escapeIdentifier(target)} SET ${pg.escapeIdentifier(name)} = ${setting}`,
    );
  }
}

function pipeDump(
  store: StoreHandle,
  pgDump: string,
  pgRestore: string,
  source: string,
  target: string,
  snapshot: string,
): Promise<void> {
  const config = store.connectionConfig(source);
  const env = {
    ...process.env,
    PGHOST: String(config.host ?? ""),
    PGPORT: String(config.port ?? 5432),
    PGUSER: String(config.user ?? ""),
    PGPASSWORD: typeof config.password === "string" ? config.password : "",
    // Strata's own connections: the store's triggers let their writes through.
    PGOPTIONS: String(config.options ?? ""),
  };
  return new Promise((resolveCopy, reject) => {
    const dump = spawn(
      pgDump,
      ["--format=custom", "--compress=0", `--snapshot=${snapshot}`, "--dbname", source],
      {
        env,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const restore = spawn(pgRestore, ["--exit-on-error", "--dbname", target], {
      env,
      stdio: ["pipe", "ignore", "pipe"],
    });
    const stderr = { dump: "", restore: "" };
    dump.stderr.on("data", (d: Buffer) => {
      stderr.dump = (stderr.dump + d.toString()).slice(-STDERR_TAIL);
    });
    restore.stderr.on("data", (d: Buffer) => {
      stderr.restore = (stderr.restore + d.toString()).slice(-STDERR_TAIL);
    });
    dump.stdout.pipe(restore.stdin);
    restore.stdin.on("error", () => {}); // restore died first: its exit says why
    let pending = 2;
    let spawnFailure: Error | undefined;
    const exits: Partial<
      Record<"dump" | "restore", { failed: boolean; signal: NodeJS.Signals | null; why: string }>
    > = {};
    let dumpKilled = false;
    const done = (which: "dump" | "restore", code: number | null, signal: NodeJS.Signals | null) => {
      exits[which] = {
        failed: code !== 0,
        signal,
        why: stderr[which].trim() || (signal ? `killed by ${signal}` : `exit code ${code}`),
      };
      if (which === "restore" && code !== 0 && !dumpKilled) {
        dumpKilled = true;
        dump.kill();
      }
      if (--pending > 0) return;
      // Either may fail because the other did, and either may exit first: pg_dump ended by
      // pg_restore's failure (our kill, or the pipe closing under it) is not the cause, while a
      // pg_dump that failed on its own (a server version it refuses, a lost connection) leaves
      // pg_restore a short input, and its own error is the cause.
      const restoreFailed = exits.restore?.failed === true;
      const dumpFailed =
        exits.dump?.failed === true &&
        !(
          restoreFailed &&
          (exits.dump.signal !== null || /broken pipe|could not write/i.test(exits.dump.why))
        );
      const culprit = dumpFailed ? "dump" : restoreFailed ? "restore" : undefined;
      if (spawnFailure) reject(spawnFailure);
      else if (culprit) {
        const why = exits[culprit]?.why ?? "";
        reject(
          new BranchError(
            `copying database "${source}" into "${target}" failed in ${culprit === "dump" ? "pg_dump" : "pg_restore"}: ${why}`,
            "58000",
            /version mismatch|incompatible server version/.test(why)
              ? `pg_dump and pg_restore must be of the store's major version or newer (using ${pgDump}): install that version's client programs (Debian/Ubuntu: postgresql-client-<major>), or set store.bin_dir or STRATA_PG_BIN to their directory; the partial copy was removed`
              : "the Strata log has the details; the partial copy was removed",
          ),
        );
      } else resolveCopy();
    };
    dump.on("error", (err) => {
      spawnFailure ??= err;
    });
    restore.on("error", (err) => {
      spawnFailure ??= err;
    });
    dump.on("close", (code, signal) => done("dump", code, signal));
    restore.on("close", (code, signal) => done("restore", code, signal));
  });
}
