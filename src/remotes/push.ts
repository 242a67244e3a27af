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
//
// Snapshots: when the history pushed since the branch's last snapshot has grown as large as that
// snapshot (and past STRATA_SNAPSHOT_MIN_BYTES, default 64 MiB), the push also writes a snapshot
// object — every table as of the pushed head, with its definition — and its pack names it. A
// clone then loads the history before the snapshot as rows (no replay) and the tables from the
// snapshot, and applies only the commits after it. Snapshots cost at most as much again as the
// history they save replaying.
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import {
  OBJECT_VERSION,
  ObjectWriter,
  PACK_FORMAT,
  type PackHeader,
  quoteIdent,
  quoteLiteral,
  RemoteOperationError,
  readPackHeader,
  SNAPSHOT_FORMAT,
  type SnapshotRef,
} from "./pack-objects.ts";
import type { RefValue, RemoteStorage } from "./storage.ts";

/** Commits per batch: bounds the receiver's staging tables, not correctness. */
const BATCH_COMMITS = 500;
/** Pushes that lost the race to another pusher, retried from the remote's new head. */
const RACE_RETRIES = 5;
/** History smaller than this is replayed by a clone rather than snapshotted. */
const SNAPSHOT_MIN_BYTES = Number(process.env.STRATA_SNAPSHOT_MIN_BYTES ?? 64 * 1024 * 1024);

export interface PushResult {
  status: "pushed" | "up-to-date";
  branch: string;
  head: string;
  commits: number;
  pack?: string;
  bytes?: number;
  /** Why the snapshot due with this push was not written (a later push writes it). */
  snapshotDeferred?: string;
}

/**
 * Make every commit this session can see durable on the store, before any of them is pushed, and
 * make sure the database has its identity (tables get their ids from it as the objects name
 * them). The apply path commits without waiting for its WAL flush (acknowledged upstream only
 * once flushed), so a commit can be visible before it is durable; a store crash then loses it and
 * the replica makes it again, not always as the same commit (a held table's replayed changes are
 * dated at the replay). A remote must never hold a commit its source may lose. A transaction
 * that writes WAL and waits for its own local flush flushes every record before its commit
 * record: all that was visible when it began. (One that writes no WAL commits without a flush,
 * whatever synchronous_commit says: hence the identity row is written even when it exists.)
 */
export async function flushVisibleCommits(client: pg.Client): Promise<void> {
  await client
    .query(
      `BEGIN; SET LOCAL synchronous_commit = local;
       INSERT INTO strata.database_identity (id) VALUES (replace(gen_random_uuid()::text, '-', ''))
         ON CONFLICT (singleton) DO UPDATE SET id = strata.database_identity.id;
       COMMIT`,
    )
    .catch(async (err) => {
      // A failed statement leaves the transaction block open: the connection is reused.
      await client.query("ROLLBACK").catch(() => {});
      throw err;
    });
}

/** Push `branch` of the database `client` is connected to. */
export async function pushBranch(opts: {
  client: pg.Client;
  storage: RemoteStorage;
  remote: string;
  branch: string;
  force?: boolean;
  /** Record the remote branch as pushed (strata.remote_branches); false for a remote the database does not name. */
  record?: boolean;
}): Promise<PushResult> {
  const { client, storage, remote, branch } = opts;
  const record = opts.record !== false;
  const refName = `heads/${branch}`;
  for (let attempt = 0; ; attempt++) {
    const { rows } = await client.query<{ seq: string; hash: string }>(
      // By the number: an output column "seq" of type text would sort as text (10 before 9).
      "SELECT c.seq::text AS seq, c.hash FROM strata.commits c ORDER BY c.seq DESC LIMIT 1",
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
    if (base && baseSeq >= BigInt(head.seq)) {
      if (record) await recordRemoteBranch(client, remote, branch, base);
      return { status: "up-to-date", branch, head: head.hash, commits: 0 };
    }
    const previous = base ? await readPackHeader(storage, base.pack) : undefined;
    const dir = await mkdtemp(join(tmpdir(), "strata-pack-"));
    try {
      const written = await writeObjects(
        client,
        storage,
        dir,
        { branch, base, baseSeq, headSeq: BigInt(head.seq), previous },
        { snapshots: true },
      );
      const address = await storage.putObjectFile(written.pack);
      const bytes = (await stat(written.pack)).size;
      const next = { commit: written.head, pack: address };
      if (await storage.compareAndSwapRef(refName, ref, next)) {
        if (record) await recordRemoteBranch(client, remote, branch, next);
        return {
          status: "pushed",
          branch,
          head: written.head,
          commits: written.commits,
          pack: address,
          bytes,
          snapshotDeferred: written.snapshotDeferred,
        };
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

/**
 * Store the commits after `base` (a commit of this database's history) as one pack in `storage`,
 * with `base` as its base (a pack that names no earlier pack), and point heads/<branch> at it. A
 * database whose head is `base` pulls exactly these commits: how dolt_merge moves one branch's
 * commits into another (through a scratch remote).
 */
export async function pushCommitsAfter(opts: {
  client: pg.Client;
  storage: RemoteStorage;
  branch: string;
  base: string;
}): Promise<{ head: string; commits: number }> {
  const { client, storage, branch } = opts;
  const { rows } = await client.query<{ base_seq: string | null; head_seq: string }>(
    `SELECT (SELECT seq::text FROM strata.commits WHERE hash = $1) AS base_seq, c.seq::text AS head_seq
       FROM strata.commits c ORDER BY c.seq DESC LIMIT 1`,
    [opts.base],
  );
  const found = rows[0];
  if (!found?.base_seq)
    throw new RemoteOperationError(`commit ${opts.base} is not in this branch's history`, "55000");
  const dir = await mkdtemp(join(tmpdir(), "strata-pack-"));
  try {
    // A merge's pull applies commits; only a clone loads snapshots.
    const written = await writeObjects(
      client,
      storage,
      dir,
      {
        branch,
        base: { commit: opts.base, pack: "0".repeat(64) },
        baseSeq: BigInt(found.base_seq),
        headSeq: BigInt(found.head_seq),
        previous: undefined,
      },
      { snapshots: false },
    );
    const pack = await storage.putObjectFile(written.pack);
    await storage.compareAndSwapRef(`heads/${branch}`, null, { commit: written.head, pack });
    return { head: written.head, commits: written.commits };
  } finally {
    await rm(dir, { recursive: true, force: true });
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

interface PushRange {
  branch: string;
  base: RefValue | null;
  baseSeq: bigint;
  headSeq: bigint;
  /** The header of the pack `base` names: where the branch's last snapshot is. */
  previous: PackHeader | undefined;
}

/** How long a push waits for a table another transaction holds (a schema change, a TRUNCATE). */
const TABLE_LOCK_TIMEOUT = process.env.STRATA_SNAPSHOT_LOCK_TIMEOUT ?? "10s";

interface WrittenObjects {
  pack: string;
  commits: number;
  /** The commit pushed: the range's head, or, with a snapshot, the latest commit when it was read. */
  head: string;
  /** Why no snapshot was written although one was due (a later push writes it). */
  snapshotDeferred?: string;
}

/** The user's tables (what a snapshot holds), with `c` their pg_class row: FROM ... WHERE ... */
const USER_TABLES = `FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
        AND n.nspname NOT IN ('strata', 'dolt', 'pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%'`;

/** The user's tables by the names LOCK TABLE takes: schema-qualified, quoted. */
async function userTableNames(client: pg.Client): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name ${USER_TABLES}`,
  );
  return rows.map((r) => r.name);
}

/** The user's tables could not all be locked before the snapshot of the store was taken. */
class TablesNotLocked extends Error {
  constructor(
    message: string,
    /** They moved (made, dropped, renamed) since they were listed: list them again. */
    readonly moved: boolean,
  ) {
    super(message);
  }
}

/**
 * Write commits (baseSeq, head] as a pack in `dir`, and, when one is due, a snapshot of the tables
 * as of head, which the pack names; both from one snapshot of the store. The snapshot object is
 * stored in the remote once that transaction has ended.
 *
 * What reads the tables themselves (a snapshot, and the rows of a commit that copied a table
 * whole, strata.rows_as_of) needs them to be as history says at the commit read. So:
 * - the tables are locked (ACCESS SHARE) before the snapshot of the store is taken. A TRUNCATE or
 *   a table-rewriting ALTER that commits after it would otherwise show the table emptied or
 *   rewritten under it: neither is MVCC-safe. One that comes meanwhile waits for the push.
 * - a snapshot is of the latest commit in the snapshot of the store: on a replica (or with other
 *   sessions committing) that can be past range.headSeq, and the push goes up to it.
 */
async function writeObjects(
  client: pg.Client,
  storage: RemoteStorage,
  dir: string,
  range: PushRange,
  options: { snapshots: boolean },
): Promise<WrittenObjects> {
  // Outside the transaction: the commits in (baseSeq, headSeq] made durable, and the database's
  // identity there for every writer (strata.table_id).
  await flushVisibleCommits(client);
  // History is append-only: what is up to range.headSeq is read outside the transaction.
  const { rows: before } = await client.query<{ bytes: string; bases: boolean }>(
    `SELECT coalesce(sum(pg_column_size(c.*)), 0)::text AS bytes,
            EXISTS (SELECT 1 FROM strata.snapshot_bases WHERE commit_seq > $1 AND commit_seq <= $2) AS bases
       FROM strata.changes c WHERE commit_seq > $1 AND commit_seq <= $2`,
    [String(range.baseSeq), String(range.headSeq)],
  );
  const bytesBefore = Number(before[0].bytes);
  const previous = range.previous?.snapshot ?? null;
  let snapshotDue =
    options.snapshots &&
    (range.previous?.bytes_since_snapshot ?? 0) + bytesBefore >=
      Math.max(previous?.bytes ?? 0, SNAPSHOT_MIN_BYTES);
  let locking = snapshotDue || before[0].bases ? await userTableNames(client) : null;
  let deferred: string | undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      const written = await writeObjectsInSnapshot(client, dir, range, bytesBefore, locking, snapshotDue);
      if (written.snapshot) {
        const address = await storage.putObjectFile(written.snapshot.file);
        if (address !== written.snapshot.address)
          throw new Error(`the remote stored the snapshot as ${address}, not ${written.snapshot.address}`);
      }
      // Commits after range.headSeq were not made durable above: the remote must not get ahead of
      // what a crash of this store keeps.
      if (written.headSeq > range.headSeq) await flushVisibleCommits(client);
      return {
        pack: written.pack,
        commits: written.commits,
        head: written.head,
        snapshotDeferred: deferred ?? written.snapshotDeferred,
      };
    } catch (err) {
      if (!(err instanceof TablesNotLocked)) throw err;
      if (err.moved && attempt < 3) {
        locking = await userTableNames(client);
        continue;
      }
      if (before[0].bases)
        throw new RemoteOperationError(
          `dolt_push: ${err.message}`,
          "55P03",
          "a commit to push copied a table whole, and its rows are read from the table: push again once the other transaction (a schema change, a TRUNCATE) has ended",
        );
      // Only the snapshot needed the locks: the pack goes without it.
      deferred = `${err.message}: a later push writes it`;
      snapshotDue = false;
      locking = null;
    }
  }
}

/** Lock the tables, as the transaction's first statement (LOCK TABLE takes no snapshot). */
async function lockTables(client: pg.Client, names: string[]): Promise<void> {
  if (names.length === 0) return;
  try {
    await client.query(
      `SET LOCAL lock_timeout = ${quoteLiteral(TABLE_LOCK_TIMEOUT)};
       LOCK TABLE ${names.join(", ")} IN ACCESS SHARE MODE;
       SET LOCAL lock_timeout TO DEFAULT`,
    );
  } catch (err) {
    const code = (err as { code?: string }).code;
    // 55P03: another transaction held a table past the timeout; 40P01: a deadlock ended this
    // statement (the applier's statement can be the one ended instead: it retries its batch).
    if (code === "55P03" || code === "40P01" || code === "42P01")
      throw new TablesNotLocked(
        `the tables could not be locked (${(err as Error).message})`,
        code === "42P01",
      );
    throw err;
  }
}

interface InSnapshot {
  pack: string;
  commits: number;
  head: string;
  headSeq: bigint;
  /** The snapshot object written, to be stored in the remote under its address. */
  snapshot?: { file: string; address: string };
  snapshotDeferred?: string;
}

/** writeObjects' transaction: everything read from one snapshot of the store. */
async function writeObjectsInSnapshot(
  client: pg.Client,
  dir: string,
  range: PushRange,
  bytesBefore: number,
  locking: string[] | null,
  snapshotDue: boolean,
): Promise<InSnapshot> {
  await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
  const writers: ObjectWriter[] = [];
  try {
    if (locking) await lockTables(client, locking);
    await client.query(
      "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; SET LOCAL extra_float_digits = 3",
    );
    // The first statement to take the snapshot of the store. pg_locks is not MVCC: it shows the
    // locks held now, so every user table in the snapshot is checked to be locked already.
    const { rows: heads } = await client.query<{
      seq: string;
      hash: string;
      range_hash: string;
      unlocked: boolean;
      uncommitted: boolean;
      joining: string[];
    }>(
      `SELECT c.seq::text AS seq, c.hash, (SELECT hash FROM strata.commits WHERE seq = $1) AS range_hash,
              $2::bool AND EXISTS (SELECT 1 ${USER_TABLES}
                AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation'
                                  AND l.relation = c.oid AND l.granted)) AS unlocked,
              EXISTS (SELECT 1 FROM strata.working_schema_changes) AS uncommitted,
              ARRAY(SELECT rel FROM strata.held_tables WHERE reason = 'joining' AND copied_lsn IS NOT NULL) AS joining
         FROM strata.commits c ORDER BY c.seq DESC LIMIT 1`,
      [String(range.headSeq), locking !== null],
    );
    const head = heads[0];
    if (head.unlocked) throw new TablesNotLocked("the tables changed while being locked", true);
    // No snapshot while a schema change is uncommitted (a snapshot takes each table's definition
    // from the catalog; a SQL database's usual state, not worth a warning), nor while a joining
    // table's copy is in its table but not yet in history.
    const snapshotDeferred =
      snapshotDue && !head.uncommitted && head.joining.length > 0
        ? `a table joining the replica (${head.joining.join(", ")}) is copied but not yet in history: a later push writes it`
        : undefined;
    const snapshotting = snapshotDue && !head.uncommitted && !snapshotDeferred;
    const headSeq = snapshotting ? BigInt(head.seq) : range.headSeq;
    const span = { ...range, headSeq };
    let snapshot = range.previous?.snapshot ?? null;
    let bytesSince = (range.previous?.bytes_since_snapshot ?? 0) + bytesBefore;
    let written: InSnapshot["snapshot"];
    if (snapshotting) {
      const writer = new ObjectWriter(join(dir, "snapshot.gz"));
      writers.push(writer);
      const commit = await writeSnapshot(client, writer, headSeq);
      await writer.finish();
      written = { file: writer.file, address: writer.address };
      snapshot = { address: writer.address, commit, bytes: writer.dataBytes };
      bytesSince = 0;
    }
    const writer = new ObjectWriter(join(dir, "pack.gz"));
    writers.push(writer);
    const commits = await writePack(client, writer, span, snapshot, bytesSince, head.joining);
    await writer.finish();
    await client.query("COMMIT");
    return {
      pack: writer.file,
      commits,
      head: snapshotting ? head.hash : head.range_hash,
      headSeq,
      snapshot: written,
      snapshotDeferred,
    };
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    for (const writer of writers) writer.abandon();
    throw err;
  }
}

/** Every table as of commit `seq`, with its definition; returns the commit's hash. */
async function writeSnapshot(client: pg.Client, writer: ObjectWriter, seq: bigint): Promise<string> {
  const { rows: head } = await client.query<{ hash: string }>(
    "SELECT hash FROM strata.commits WHERE seq = $1",
    [String(seq)],
  );
  await writer.section({
    section: "snapshot",
    format: SNAPSHOT_FORMAT,
    version: OBJECT_VERSION,
    commit: head[0].hash,
  });
  // The user's tables: what the history surface covers (its tables), and any other table of
  // theirs outside Strata's own schemas.
  const { rows: tables } = await client.query<{
    rel: string;
    tbl: string;
    definition: unknown;
    columns: string[];
    keys: string[] | null;
    working: boolean;
    partitioned: boolean;
  }>(
    `SELECT n.nspname || '.' || c.relname AS rel, c.relkind = 'p' AS partitioned, c.oid::regclass::text AS tbl, strata.table_definition(c.oid) AS definition,
            (SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute
              WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) AS columns,
            strata.history_keys(n.nspname || '.' || c.relname, c.oid::regclass) AS keys,
            EXISTS (SELECT 1 FROM strata.working_changes w WHERE w.rel = n.nspname || '.' || c.relname) AS working
       ${USER_TABLES}
      ORDER BY 1`,
  );
  for (const t of tables) {
    const select = t.working
      ? // Uncommitted changes are not the commit's: read the table as of it.
        `SELECT ${t.columns.map((c) => `(x.r).${quoteIdent(c)}`).join(", ")}
           FROM (SELECT jsonb_populate_record(NULL::${t.tbl}, j) AS r
                   FROM strata.rows_as_of(${quoteLiteral(t.rel)}, ${quoteLiteral(t.tbl)}::regclass, ${quoteLiteral(pgArray(t.keys ?? []))}::text[], ${String(seq)}) j) x`
      : // ONLY: a plain table's inheritance children are tables of their own here.
        `SELECT ${t.columns.map(quoteIdent).join(", ")} FROM ${t.partitioned ? "" : "ONLY "}${t.tbl}`;
    await writer.copySection(
      client,
      { section: "table", rel: t.rel, definition: t.definition, columns: t.columns },
      select,
    );
  }
  await writer.section({ section: "end", tables: tables.length });
  return head[0].hash;
}

/** Write commits (baseSeq, headSeq] as a pack; returns how many. */
async function writePack(
  client: pg.Client,
  writer: ObjectWriter,
  range: PushRange,
  snapshot: SnapshotRef | null,
  bytesSinceSnapshot: number,
  /** Tables whose copy is in the table but not yet in history: their rows cannot be read as of a commit. */
  joining: string[],
): Promise<number> {
  const { baseSeq, headSeq } = range;
  const hashes = await client.query<{ hash: string }>(
    "SELECT hash FROM strata.commits WHERE seq > $1 AND seq <= $2 ORDER BY seq",
    [String(baseSeq), String(headSeq)],
  );
  const header: PackHeader = {
    section: "pack",
    format: PACK_FORMAT,
    version: OBJECT_VERSION,
    branch: range.branch,
    base: range.base?.commit ?? null,
    base_pack: range.base?.pack ?? null,
    commits: hashes.rows.map((r) => r.hash),
    snapshot,
    bytes_since_snapshot: bytesSinceSnapshot,
  };
  await writer.section(header);
  const ensures = await tablesToEnsure(client, baseSeq, headSeq);
  const bases = await client.query<{ seq: string; rel: string; key_columns: string[] }>(
    "SELECT commit_seq::text AS seq, rel, key_columns FROM strata.snapshot_bases WHERE commit_seq > $1 AND commit_seq <= $2 ORDER BY commit_seq, rel",
    [String(baseSeq), String(headSeq)],
  );
  const rejoining = bases.rows.find((b) => joining.includes(b.rel));
  if (rejoining)
    throw new RemoteOperationError(
      `dolt_push: table ${rejoining.rel}, copied whole by a commit to push, is being copied in again`,
      "55006",
      "push again once it has joined (dolt_replication_status shows it no longer held)",
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
    await writer.copySection(
      client,
      { section: "commits" },
      `SELECT ${idx("seq")}, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn
         FROM strata.commits WHERE seq > ${lo} AND seq <= ${hi} ORDER BY seq`,
    );
    const ensureRows = ensures
      .filter((e) => e.seq > from - 1n && e.seq <= to)
      .map((e) => ({ idx: String(e.seq - baseSeq), rel: e.rel, def: JSON.stringify(e.definition) }));
    await writer.copySection(
      client,
      { section: "schema" },
      `SELECT ${idx("commit_seq")}, ord, rel, ddl, definition, 'schema' FROM strata.schema_changes
        WHERE commit_seq > ${lo} AND commit_seq <= ${hi}
       UNION ALL
       SELECT e.idx::bigint, -1, e.rel, '', e.def::jsonb, 'ensure'
         FROM jsonb_to_recordset(${quoteLiteral(JSON.stringify(ensureRows))}::jsonb) AS e(idx text, rel text, def text)`,
    );
    await writer.copySection(
      client,
      { section: "changes" },
      `SELECT ${idx("commit_seq")}, ord, rel, op, row_key, old_key, old_row, new_row FROM strata.changes
        WHERE commit_seq > ${lo} AND commit_seq <= ${hi} ORDER BY commit_seq, ord`,
    );
    await writer.copySection(
      client,
      { section: "bases" },
      `SELECT ${idx("commit_seq")}, rel, key_columns FROM strata.snapshot_bases WHERE commit_seq > ${lo} AND commit_seq <= ${hi}`,
    );
    await writer.section({ section: "apply", from: Number(from - baseSeq), to: Number(to - baseSeq) });
    for (const b of bases.rows.filter((row) => BigInt(row.seq) === to)) {
      const table = await client.query<{
        tbl: string | null;
        columns: string[] | null;
        then: string[] | null;
        now: string[] | null;
      }>(
        `SELECT strata.regclass_of($1)::text AS tbl,
                (SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute
                  WHERE attrelid = strata.regclass_of($1) AND attnum > 0 AND NOT attisdropped) AS columns,
                d.names AS then, strata.names_now($1, $2, 2147483647, d.names) AS now
           FROM (SELECT CASE WHEN def IS NOT NULL
                             THEN ARRAY(SELECT c ->> 'name' FROM jsonb_array_elements(def -> 'columns') c) END AS names
                   FROM (SELECT (${definitionAt("$1", "$2")}) AS def) x) d`,
        [b.rel, b.seq],
      );
      const tbl = table.rows[0]?.tbl;
      if (!tbl || !table.rows[0].columns)
        throw new RemoteOperationError(
          `dolt_push: table ${b.rel}, copied whole by commit ${header.commits[Number(to - baseSeq) - 1]}, is no longer in this database`,
          "42P01",
          "its rows as of that commit cannot be read back: push from a database that still has the table",
        );
      const present = table.rows[0].columns;
      // The rows under the columns the table had at the base, which is how the receiver has it
      // then; a column dropped since reads as null (its values there are not kept).
      const { then, now } = table.rows[0];
      const columns = then ?? present;
      const values = columns.map((c, i) => {
        const current = then && now ? now[i] : c;
        return present.includes(current) ? `(x.r).${quoteIdent(current)}` : "NULL";
      });
      await writer.copySection(
        client,
        { section: "table", idx: Number(to - baseSeq), rel: b.rel, columns },
        `SELECT ${values.join(", ")}
           FROM (SELECT jsonb_populate_record(NULL::${tbl}, j) AS r
                   FROM strata.rows_as_of(${quoteLiteral(b.rel)}, ${quoteLiteral(tbl)}::regclass,
                                          -- The base's key under today's column names.
                                          strata.names_now(${quoteLiteral(b.rel)}, ${b.seq}, -1, ${quoteLiteral(pgArray(b.key_columns))}::text[]),
                                          ${hi}) j) x`,
      );
    }
    from = to + 1n;
  }
  await writer.section({ section: "end", commits: header.commits.length });
  return header.commits.length;
}

/**
 * A scalar subquery: table `rel`'s definition after commit `seq` (SQL expressions), as the last
 * schema change or its entry into history recorded it; NULL when history records none.
 */
function definitionAt(rel: string, seq: string): string {
  return `SELECT x.definition
            FROM (SELECT definition, commit_seq, ord FROM strata.schema_changes
                   WHERE rel = ${rel} AND commit_seq <= ${seq} AND definition IS NOT NULL AND NOT definition ? 'dropped'
                  UNION ALL
                  SELECT definition, commit_seq, -1 FROM strata.table_entries WHERE rel = ${rel} AND commit_seq <= ${seq}) x
           ORDER BY x.commit_seq DESC, x.ord DESC LIMIT 1`;
}

/**
 * Tables the commits use (rows, snapshot bases) that no earlier commit of the push defines: each
 * gets an 'ensure' definition at the first commit that uses it (made only where it is missing):
 * the one history records for it then (definitionAt), or else today's.
 */
async function tablesToEnsure(client: pg.Client, baseSeq: bigint, headSeq: bigint): Promise<Ensure[]> {
  const { rows } = await client.query<{ seq: string; rel: string; definition: unknown }>(
    `SELECT f.seq::text, f.rel,
            coalesce((${definitionAt("f.rel", "f.seq")}), strata.table_definition(strata.regclass_of(f.rel))) AS definition
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

function pgArray(items: string[]): string {
  return `{${items.map((i) => `"${i.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`).join(",")}}`;
}
