// `strata log [REVISION]`: the commits from REVISION (default HEAD) back, newest first, as the
// dolt_log view lists them. Read in pages by commit_order (keyset, each an index range), with no
// transaction held open: a reader paging slowly (`strata log --limit 0 | less`) must not pin the
// store's oldest snapshot, and commits below a given one never change.
import type pg from "pg";
import type { LoadedConfig } from "../config/load.ts";
import { type Output, oneLine, paint, TableWriter } from "./output.ts";
import { connectHistoryReader } from "./replica-client.ts";

export interface LogOptions {
  /** Where the log starts (any name dolt.commit_seq takes); HEAD when absent. */
  revision?: string;
  /** At most this many commits; 0 for all of them. */
  limit: number;
}

export const DEFAULT_LOG_LIMIT = 50;
/** Characters of a hash shown on a terminal: enough to be unique in any real history, and accepted back as a prefix. */
export const SHORT_HASH = 8;
const PAGE = 1000;

interface LogRow {
  json: string;
  commit_hash: string;
  date: string;
  committer: string;
  upstream_lsn: string | null;
  message: string;
  commit_order: string;
}

export async function logCommand(loaded: LoadedConfig, options: LogOptions, out: Output): Promise<void> {
  const client = await connectHistoryReader(loaded, "log");
  try {
    await writeLog(client, options, out);
  } finally {
    await client.end().catch(() => {});
  }
}

export async function writeLog(client: pg.Client, options: LogOptions, out: Output): Promise<void> {
  if (options.revision === undefined) {
    const { rows } = await client.query("SELECT EXISTS (SELECT 1 FROM strata.commits) AS any");
    if (!rows[0].any) {
      // An empty history is a state, not an error (a named revision still fails to resolve).
      if (out.human) await out.line("no commits yet");
      return;
    }
  }
  const start = await client.query<{ seq: string }>("SELECT dolt.commit_seq($1)::text AS seq", [
    options.revision ?? "HEAD",
  ]);
  let upTo = BigInt(start.rows[0].seq);
  let remaining = options.limit > 0 ? options.limit : Number.POSITIVE_INFINITY;
  const table = new TableWriter(
    [
      { header: "commit" },
      { header: "date (UTC)" },
      { header: "committer" },
      { header: "upstream lsn" },
      { header: "message" },
    ],
    out,
  );
  let last: bigint | undefined;
  while (remaining > 0) {
    const { rows } = await client.query<LogRow>(
      `SELECT to_json(l)::text AS json, l.commit_hash, to_char(l.date, 'YYYY-MM-DD HH24:MI:SS') AS date,
              l.committer, l.upstream_lsn::text AS upstream_lsn, l.message, l.commit_order::text AS commit_order
         FROM dolt.dolt_log l
        WHERE l.commit_order <= $1
        ORDER BY l.commit_order DESC
        LIMIT $2`,
      [upTo.toString(), Math.min(PAGE, remaining)],
    );
    if (rows.length === 0) break;
    if (out.human) {
      await table.write(
        rows.map((r) => [
          paint(out, "yellow", r.commit_hash.slice(0, SHORT_HASH)),
          r.date,
          oneLine(r.committer),
          r.upstream_lsn ?? "-",
          oneLine(r.message),
        ]),
      );
    } else {
      for (const r of rows) await out.line(r.json);
    }
    remaining -= rows.length;
    last = BigInt(rows[rows.length - 1].commit_order);
    upTo = last - 1n;
  }
  if (out.human && remaining === 0 && last !== undefined) {
    const more = await client.query(
      "SELECT EXISTS (SELECT 1 FROM dolt.dolt_log WHERE commit_order < $1) AS more",
      [last.toString()],
    );
    if (more.rows[0].more) {
      await out.line(paint(out, "dim", `(older commits not shown: --limit N for more, --limit 0 for all)`));
    }
  }
}
