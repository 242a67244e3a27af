// dolt_push: the commits a remote branch lacks, written as one pack (an immutable object), then
// the branch moved to it with a compare-and-swap. A push that dies midway leaves at most an
// object nobody points to; a push that loses a race to another pusher starts over from the new
// head (or is refused, when that head is not in this database's history: a non-fast-forward).
//
// A pack holds commits (base, head] of one branch, and names the pack that holds `base`, so the
// packs of a branch form a chain back to its first commit:
//
//   S pack      {format, version, branch, base, base_pack, commits: [hash, ...]}
//   per batch of commits:
//     S commits / schema / changes / bases   COPY text of their history rows (idx = position in
//                                            the pack, 1-based, in place of the local seq)
//     S apply   {from, to}                   the receiver applies commits from..to here
//     S table   {idx, rel, columns}          a snapshot base's rows as of commit idx (after it)
//   S end       {commits}
//
// A commit that uses a table no commit in the push defines carries an 'ensure' definition of it
// (from the catalog now), so a pack can always be applied by a database that lacks the table.
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createGzip } from "node:zlib";
import type pg from "pg";
import { to as copyTo } from "pg-copy-streams";
import { encodeData, encodeEnd, encodeSection, type SectionHeader } from "./pack-frames.ts";
import type { RefValue, RemoteStorage } from "./storage.ts";

export const PACK_FORMAT = "strata-pack";
export const PACK_VERSION = 1;
/** Commits per batch: bounds the receiver's staging tables, not correctness. */
const BATCH_COMMITS = 500;
const DATA_FRAME = 1024 * 1024;
/** Pushes that lost the race to another pusher, retried from the remote's new head. */
const RACE_RETRIES = 5;

export interface PackHeader extends SectionHeader {
  section: "pack";
  format: string;
  version: number;
  branch: string;
  base: string | null;
  base_pack: string | null;
  commits: string[];
}

export interface PushResult {
  status: "pushed" | "up-to-date";
  branch: string;
  head: string;
  commits: number;
  pack?: string;
  bytes?: number;
}

export class RemoteOperationError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/** Push `branch` of the database `client` is connected to. */
export async function pushBranch(opts: {
  client: pg.Client;
  storage: RemoteStorage;
  remote: string;
  branch: string;
  force?: boolean;
}): Promise<PushResult> {
  const { client, storage, remote, branch } = opts;
  const refName = `heads/${branch}`;
  for (let attempt = 0; ; attempt++) {
    const { rows } = await client.query<{ seq: string; hash: string }>(
      "SELECT seq::text, hash FROM strata.commits ORDER BY seq DESC LIMIT 1",
    );
    const head = rows[0];
    if (!head)
      throw new RemoteOperationError(
        `dolt_push: this database has no commits to push`,
        "55000",
        "make a commit first: SELECT dolt_commit('-Am', 'message')",
      );
    const ref = await storage.readRef(refName);
    let baseSeq = 0n;
    let base: RefValue | null = null;
    if (ref) {
      const found = await client.query<{ seq: string }>(
        "SELECT seq::text FROM strata.commits WHERE hash = $1",
        [ref.commit],
      );
      if (found.rows[0]) {
        baseSeq = BigInt(found.rows[0].seq);
        base = ref;
      } else if (!opts.force)
        throw new RemoteOperationError(
          `dolt_push: the remote's ${branch} (${ref.commit}) is not in this database's history`,
          "55000",
          `the remote has commits this database lacks: pull them first (SELECT dolt_pull('${remote}')), or overwrite the remote's ${branch} with dolt_push('--force', '${remote}', '${branch}')`,
        );
    }
    if (base && baseSeq === BigInt(head.seq)) {
      await recordRemoteBranch(client, remote, branch, base);
      return { status: "up-to-date", branch, head: head.hash, commits: 0 };
    }
    if (base && baseSeq > BigInt(head.seq))
      return { status: "up-to-date", branch, head: head.hash, commits: 0 }; // the remote is ahead
    const dir = await mkdtemp(join(tmpdir(), "strata-pack-"));
    try {
      const file = join(dir, "pack.gz");
      const commits = await writePack(client, file, { branch, base, baseSeq, headSeq: BigInt(head.seq) });
      const address = await storage.putObjectFile(file);
      const bytes = (await stat(file)).size;
      const next = { commit: head.hash, pack: address };
      if (await storage.compareAndSwapRef(refName, ref, next)) {
        await recordRemoteBranch(client, remote, branch, next);
        return { status: "pushed", branch, head: head.hash, commits, pack: address, bytes };
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    if (attempt >= RACE_RETRIES)
      throw new RemoteOperationError(
        `dolt_push: the remote's ${branch} kept moving while pushing (other pushers)`,
        "40001",
        "run dolt_push again",
      );
  }
}

export async function recordRemoteBranch(client: pg.Client, remote: string, branch: string, ref: RefValue) {
  await client.query(
    `INSERT INTO strata.remote_branches (remote, branch, commit_hash, pack) VALUES ($1, $2, $3, $4)
     ON CONFLICT (remote, branch) DO UPDATE SET commit_hash = excluded.commit_hash, pack = excluded.pack, seen_at = clock_timestamp()`,
    [remote, branch, ref.commit, ref.pack],
  );
}

interface Ensure {
  seq: bigint;
  rel: string;
  definition: unknown;
}

/** Write commits (baseSeq, headSeq] as a pack to `file`; returns how many. */
async function writePack(
  client: pg.Client,
  file: string,
  range: { branch: string; base: RefValue | null; baseSeq: bigint; headSeq: bigint },
): Promise<number> {
  const { baseSeq, headSeq } = range;
  const gzip = createGzip({ level: 6 });
  const out = createWriteStream(file);
  const written = once(out, "close");
  gzip.pipe(out);
  const write = async (bytes: Buffer) => {
    if (!gzip.write(bytes)) await once(gzip, "drain");
  };
  // Tables get their ids (strata.table_id) as the pack names them: the database's own part first,
  // outside the pack's snapshot, so that it is there for every writer.
  await client.query(
    "INSERT INTO strata.database_identity (id) VALUES (replace(gen_random_uuid()::text, '-', '')) ON CONFLICT DO NOTHING",
  );
  // One snapshot of history for the whole pack: commits go on while it is written.
  await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
  try {
    await client.query(
      "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; SET LOCAL extra_float_digits = 3",
    );
    const hashes = await client.query<{ hash: string }>(
      "SELECT hash FROM strata.commits WHERE seq > $1 AND seq <= $2 ORDER BY seq",
      [String(baseSeq), String(headSeq)],
    );
    const header: PackHeader = {
      section: "pack",
      format: PACK_FORMAT,
      version: PACK_VERSION,
      branch: range.branch,
      base: range.base?.commit ?? null,
      base_pack: range.base?.pack ?? null,
      commits: hashes.rows.map((r) => r.hash),
    };
    await write(encodeSection(header));
    await write(encodeEnd());
    const ensures = await tablesToEnsure(client, baseSeq, headSeq);
    const bases = await client.query<{ seq: string; rel: string; key_columns: string[] }>(
      "SELECT commit_seq::text AS seq, rel, key_columns FROM strata.snapshot_bases WHERE commit_seq > $1 AND commit_seq <= $2 ORDER BY commit_seq, rel",
      [String(baseSeq), String(headSeq)],
    );
    // Batches end at commits with snapshot bases: their rows follow the commit they belong to.
    const cuts = new Set(bases.rows.map((b) => BigInt(b.seq)));
    let from = baseSeq + 1n;
    while (from <= headSeq) {
      let to = from;
      while (to < headSeq && to - from + 1n < BigInt(BATCH_COMMITS) && !cuts.has(to)) to++;
      const lo = String(from - 1n);
      const hi = String(to);
      const idx = (column: string) => `${column} - ${String(baseSeq)}`;
      await copySection(
        client,
        write,
        { section: "commits" },
        `SELECT ${idx("seq")}, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn
           FROM strata.commits WHERE seq > ${lo} AND seq <= ${hi} ORDER BY seq`,
      );
      const ensureRows = ensures
        .filter((e) => e.seq > from - 1n && e.seq <= to)
        .map((e) => [String(e.seq - baseSeq), e.rel, JSON.stringify(e.definition)]);
      await copySection(
        client,
        write,
        { section: "schema" },
        `SELECT ${idx("commit_seq")}, ord, rel, ddl, definition, 'schema' FROM strata.schema_changes
          WHERE commit_seq > ${lo} AND commit_seq <= ${hi}
         UNION ALL
         SELECT e.idx::bigint, -1, e.rel, '', e.def::jsonb, 'ensure'
           FROM jsonb_to_recordset(${literal(JSON.stringify(ensureRows.map(([i, rel, def]) => ({ idx: i, rel, def }))))}::jsonb)
             AS e(idx text, rel text, def text)`,
      );
      await copySection(
        client,
        write,
        { section: "changes" },
        `SELECT ${idx("commit_seq")}, ord, rel, op, row_key, old_key, old_row, new_row FROM strata.changes
          WHERE commit_seq > ${lo} AND commit_seq <= ${hi} ORDER BY commit_seq, ord`,
      );
      await copySection(
        client,
        write,
        { section: "bases" },
        `SELECT ${idx("commit_seq")}, rel, key_columns FROM strata.snapshot_bases WHERE commit_seq > ${lo} AND commit_seq <= ${hi}`,
      );
      await write(
        encodeSection({ section: "apply", from: Number(from - baseSeq), to: Number(to - baseSeq) }),
      );
      await write(encodeEnd());
      for (const b of bases.rows.filter((row) => BigInt(row.seq) === to)) {
        const table = await client.query<{ tbl: string | null; columns: string[] | null }>(
          `SELECT strata.regclass_of($1)::text AS tbl,
                  (SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute
                    WHERE attrelid = strata.regclass_of($1) AND attnum > 0 AND NOT attisdropped) AS columns`,
          [b.rel],
        );
        const tbl = table.rows[0]?.tbl;
        if (!tbl || !table.rows[0].columns)
          throw new RemoteOperationError(
            `dolt_push: table ${b.rel}, copied whole by commit ${header.commits[Number(to - baseSeq) - 1]}, is no longer in this database`,
            "42P01",
            "its rows as of that commit cannot be read back: push from a database that still has the table",
          );
        const columns = table.rows[0].columns;
        await copySection(
          client,
          write,
          { section: "table", idx: Number(to - baseSeq), rel: b.rel, columns },
          `SELECT ${columns.map((c) => `(x.r).${quoteIdent(c)}`).join(", ")}
             FROM (SELECT jsonb_populate_record(NULL::${tbl}, j) AS r
                     FROM strata.rows_as_of(${literal(b.rel)}, ${literal(tbl)}::regclass, ${literal(pgArray(b.key_columns))}::text[], ${hi}) j) x`,
        );
      }
      from = to + 1n;
    }
    await write(encodeSection({ section: "end", commits: header.commits.length }));
    await write(encodeEnd());
    await client.query("COMMIT");
    gzip.end();
    await written;
    return header.commits.length;
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    gzip.destroy();
    out.destroy();
    throw err;
  }
}

/**
 * Tables the commits use (rows, snapshot bases) that no earlier commit of the push defines: each
 * gets an 'ensure' definition at the first commit that uses it (made only where it is missing).
 */
async function tablesToEnsure(client: pg.Client, baseSeq: bigint, headSeq: bigint): Promise<Ensure[]> {
  const { rows } = await client.query<{ seq: string; rel: string; definition: unknown }>(
    `SELECT f.seq::text, f.rel, strata.table_definition(strata.regclass_of(f.rel)) AS definition
       FROM (SELECT rel, min(seq) AS seq FROM (
               SELECT rel, commit_seq AS seq FROM strata.changes WHERE commit_seq > $1 AND commit_seq <= $2
               UNION ALL
               SELECT rel, commit_seq FROM strata.snapshot_bases WHERE commit_seq > $1 AND commit_seq <= $2) u
             GROUP BY rel) f
      WHERE NOT EXISTS (SELECT 1 FROM strata.schema_changes s
                         WHERE s.rel = f.rel AND s.commit_seq > $1 AND s.commit_seq <= f.seq AND s.definition IS NOT NULL)
      ORDER BY f.seq`,
    [String(baseSeq), String(headSeq)],
  );
  // A table no longer here (renamed or dropped since) was made before the push's base, or by a
  // commit in it: the remote or the pack has it already.
  return rows
    .filter((r) => r.definition !== null)
    .map((r) => ({ seq: BigInt(r.seq), rel: r.rel, definition: r.definition }));
}

async function copySection(
  client: pg.Client,
  write: (bytes: Buffer) => Promise<void>,
  header: SectionHeader,
  select: string,
): Promise<void> {
  await write(encodeSection(header));
  const source = client.query(copyTo(`COPY (${select}) TO STDOUT`));
  for await (const chunk of source as AsyncIterable<Buffer>) {
    for (let at = 0; at < chunk.length; at += DATA_FRAME)
      await write(encodeData(chunk.subarray(at, at + DATA_FRAME)));
  }
  await write(encodeEnd());
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

function literal(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

function pgArray(items: string[]): string {
  return `{${items.map((i) => `"${i.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`).join(",")}}`;
}
