// Copying one table that joins the replica mid-stream: a table created on the primary after the
// initial snapshot, or one added to the publication (ALTER PUBLICATION ... ADD TABLE).
//
//   replication connection: CREATE_REPLICATION_SLOT <temp> TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT
//        │ snapshot name, consistent point S
//        ▼
//   primary: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT; COPY (published columns, row filter)
//        ──text rows──▶ store: COPY into the replica table, inside the apply transaction
//
// The copy holds every change to the table committed before S, so the applier skips the stream's
// changes to it whose commit LSN is below S (as PostgreSQL's table sync does with its sync LSN).
// The temporary slot goes away with its connection.
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import pg from "pg";
import { from as copyFrom, to as copyTo } from "pg-copy-streams";
import { quoteIdent } from "../apply/schema-follow.ts";
import type { PostgresReplicationConfig } from "../config/schema.ts";
import { connect } from "../db.ts";
import type { RelationMessage } from "../protocol/messages.ts";
import { ReplicationConnection } from "./connection.ts";
import { upstreamConnectionConfig } from "./setup.ts";

export interface TableSyncResult {
  rows: number;
  bytes: number;
  /** The snapshot's consistent point: changes committed before it are in the copy. */
  lsn: bigint;
}

export async function copyJoiningTable(
  cfg: PostgresReplicationConfig,
  publication: string,
  relation: RelationMessage,
  store: pg.Client,
  onData: (chunk: Buffer) => void,
): Promise<TableSyncResult> {
  const repl = await ReplicationConnection.open(upstreamConnectionConfig(cfg));
  try {
    const slot = `strata_sync_${process.pid}_${relation.relationOid}`.slice(0, 63);
    const created = await repl.createSlot(slot, true, true);
    const primary = await connect(upstreamConnectionConfig(cfg));
    try {
      await primary.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
      await primary.query(`SET TRANSACTION SNAPSHOT ${pg.escapeLiteral(created.snapshotName ?? "")}`);
      // By oid: the table may have been renamed since the Relation message was sent.
      const { rows } = await primary.query<{ schema: string; name: string; relkind: string }>(
        `SELECT n.nspname AS schema, c.relname AS name, c.relkind FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1`,
        [relation.relationOid],
      );
      const table = rows[0];
      if (!table) return { rows: 0, bytes: 0, lsn: created.consistentPoint };
      const version = Number((await primary.query("SHOW server_version_num")).rows[0].server_version_num);
      let where = "";
      if (version >= 150000) {
        const filter = await primary.query<{ rowfilter: string | null }>(
          "SELECT rowfilter FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
          [publication, table.schema, table.name],
        );
        if (filter.rows[0]?.rowfilter) where = ` WHERE ${filter.rows[0].rowfilter}`;
      }
      const cols = relation.columns.map((c) => quoteIdent(c.name)).join(", ");
      const source = `${table.relkind === "p" ? "" : "ONLY "}${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
      const target = `${quoteIdent(relation.namespace)}.${quoteIdent(relation.name)}`;
      let bytes = 0;
      let lines = 0;
      await pipeline(
        primary.query(copyTo(`COPY (SELECT ${cols} FROM ${source}${where}) TO STDOUT`)),
        new Transform({
          transform(chunk: Buffer, _enc, done) {
            bytes += chunk.length;
            for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
            onData(chunk);
            done(null, chunk);
          },
        }),
        store.query(copyFrom(`COPY ${target} (${cols}) FROM STDIN`)),
      );
      return { rows: lines, bytes, lsn: created.consistentPoint };
    } finally {
      await primary.query("COMMIT").catch(() => {});
      await primary.end().catch(() => {});
    }
  } finally {
    await repl.close();
  }
}
