// Applies upstream transactions to the store. Durability contract (DESIGN decision 3):
//
//   beginTransaction/applyChange/commitTransaction   accepted: written inside the open store
//                                                     transaction, not yet durable
//   flush()                                          durable: one store COMMIT covering the user
//                                                     tables, history rows, commit rows and the
//                                                     source position; returns the new position
//
// Several upstream transactions may share one store transaction (a batch); each still becomes its
// own commit. On any error the caller calls abort(): the store rolls back and the in-memory commit
// chain returns to the last durable commit, so nothing is applied twice and nothing is skipped.
import type pg from "pg";
import { CommitHasher, type CommitHeader } from "../commits/hash.ts";
import { dropTableSurface, ensureTableSurface, historyKeyColumns } from "../history/table-surface.ts";
import { formatLsn, parseLsn } from "../protocol/lsn.ts";
import {
  type DeleteMessage,
  type InsertMessage,
  type PgoutputMessage,
  type RelationMessage,
  type TruncateMessage,
  type TupleData,
  type TypeMessage,
  UNCHANGED_TOAST,
  type UpdateMessage,
} from "../protocol/messages.ts";
import { decodePgoutput, encodePgoutput } from "../protocol/pgoutput.ts";
import { ApplyError, explainStoreError } from "./errors.ts";
import {
  dropHeldMessages,
  type HeldMessage,
  type HeldTable,
  hasHeldChanges,
  holdMessageQuery,
  holdTable,
  loadHeldTables,
  readHeldCopy,
  readHeldMessages,
  releaseTable,
  setHoldError,
  setHoldReason,
} from "./held-tables.ts";
import { findHashCalls, pointHashCalls } from "./partition-bound.ts";
import {
  type ColumnShape,
  mergeShape,
  planTableChanges,
  qualifiedName,
  quoteIdent,
  type TableShape,
} from "./schema-follow.ts";
import {
  createTable,
  createTableStatements,
  createTypeResolver,
  literal,
  readReplicaState,
  replicaTableHasRows,
  resolveTarget,
  sameShapeSql,
  type TargetTable,
  type TypeResolver,
} from "./target-table.ts";

export interface UpstreamTransaction {
  xid: number;
  commitLsn: bigint;
  /** Microseconds since 2000-01-01 (Postgres epoch). */
  commitTime: bigint;
}

export interface ApplierOptions {
  slot: string;
  /** dolt_transaction_commit: record a commit (and history) per upstream transaction. */
  history: boolean;
  committer: string;
  email: string;
  /** Returns CREATE TYPE for a user-defined upstream type, when Strata knows how to make it. */
  defineUpstreamType: (oid: number, qualifiedName: string) => Promise<string | undefined>;
  /**
   * The upstream table's attnums by column name, read from the primary when the replica first
   * meets a table, so that a later DDL message can tell a renamed column from a new one.
   */
  upstreamAttnums?: (relid: number) => Promise<Map<string, number>>;
  /** For columns added on the primary: the value its existing rows have (see upstreamMissingValues). */
  upstreamMissingValues?: (relid: number, columns: string[]) => Promise<Map<string, string>>;
  /**
   * Whether an upstream table that joins the replica mid-stream (a new table, or one added to the
   * publication) is copied: it is then held (its changes kept aside) while the replicator copies
   * it in the background (see held-tables.ts). Without it, such a table starts empty.
   */
  copyJoiningTables?: boolean;
  /**
   * The store session applies as a replica (session_replication_role = replica: it needs a
   * superuser): the replica's foreign keys and ordinary triggers do not fire on applied rows.
   * Only then may changes to different tables be sent out of their stream order, and a row
   * updated several times in a batch be written once.
   */
  replicaRole?: boolean;
}

/** Held changes replayed per store transaction. */
const REPLAY_CHUNK = 5000;
/** After a failed attempt, a retry replays only this many first: the failure is likely to repeat. */
const RETRY_CHUNK = 100;

/** A DDL message sent by the event trigger that `strata setup-primary` installs on the primary. */
export interface DdlMessage {
  v: number;
  tag: string;
  query: string;
  /** Tables created or altered, as the primary's catalog has them after the statement. */
  tables?: (TableShape & { oid: number; publications: string[]; renamedColumns?: number[] | null })[];
  /** Tables and indexes dropped; a partition with its root and bound (PartitionLeaving). */
  dropped?: ({ type: string; oid: number; schema: string; name: string } & Partial<PartitionLeaving>)[];
  /** Partitions detached by the statement, tables of their own now. */
  detached?: ({ oid: number; schema: string; name: string } & PartitionLeaving)[];
  /** A partition truncated on its own (its statement trigger's message): its rows leave the root. */
  truncated?: ({ oid: number; schema: string; name: string } & PartitionLeaving)[];
  /** Tables attached as partitions by the statement; their rows are the root's now. */
  attached?: {
    oid: number;
    schema: string;
    name: string;
    root: PartitionLeaving["root"];
    hasRows: boolean;
  }[];
}

/**
 * A partition leaving its partitioned table on the primary: its rows leave the root without row
 * changes, and are told by its bound (`pg_get_partition_constraintdef`, columns named as the root's).
 */
export interface PartitionLeaving {
  root: { oid: number; schema: string; name: string };
  bound: string | null;
}

/** Inserts into one table applied together; the longest run is INSERT_RUN_MAX rows. */
/**
 * Rows of one table applied together as one statement: a run of inserts, or of updates (full new
 * rows of a keyed table whose key does not change, so the run's order within the table does not
 * matter).
 */
interface PendingRun {
  target: TargetTable;
  /**
   * The rows' keys, each with the index of its first row (no key twice in a run of inserts: rows
   * are matched back by key; in a run of updates, a key updated again is collapsed); empty for a
   * keyless table.
   */
  keys: Map<string, number>;
  /** Per row, the index of its key in `keys` (updates). */
  groups: number[];
  /** Per column of the target, the rows' (new) values as text. */
  columns: (string | null)[][];
  seqs: string[];
  ords: number[];
  /** Bytes of the rows' values. */
  bytes: number;
  /** The commit LSN of the run's first row, for errors. */
  firstLsn: bigint;
}

const INSERT_RUN_MAX = 1000;
const UPDATE_RUN_MAX = 1000;
/** The fewest pending rows worth sending an idle store before their runs fill (feedIdleStore). */
const FEED_MIN_ROWS = 256;
/** Bounds of the statements sent ahead without waiting (see enqueue). */
const QUEUE_MAX_STATEMENTS = 1000;
const QUEUE_MAX_BYTES = 4 * 1024 * 1024;

/** Bytes of text or binary values in a tuple (for the queue's bound). */
function tupleBytes(tuple: TupleData): number {
  let n = 0;
  for (const v of tuple) if (typeof v === "string" || Buffer.isBuffer(v)) n += v.length;
  return n;
}

/** What the replica knows of an upstream table (strata.upstream_tables). */
interface KnownTable {
  rel: string;
  shape: TableShape;
  /** Set when the table was copied mid-stream: its changes committed before this LSN are in the copy. */
  syncedLsn: bigint | undefined;
}

type RowChange = InsertMessage | UpdateMessage | DeleteMessage;

const PG_EPOCH_MS = 946_684_800_000n;

/** Postgres timestamp (µs since 2000) as ISO-8601 with microseconds. */
export function pgTimeToIso(us: bigint): string {
  const ms = us / 1000n + PG_EPOCH_MS;
  const iso = new Date(Number(ms)).toISOString();
  const micros = ((us % 1000n) + 1000n) % 1000n;
  return `${iso.slice(0, 23)}${micros.toString().padStart(3, "0")}Z`;
}

/** A commit as stored: its header (what the hash covers) plus its place and identity. */
export interface CommitRow extends CommitHeader {
  seq: bigint;
  hash: string;
}

// The commit-row statements are prepared (named): planning them at every batch cost the store
// ~65 µs each time.
export async function insertCommitRow(client: pg.Client, row: CommitRow): Promise<void> {
  await client.query({
    name: "strata_commit_row",
    text: `INSERT INTO strata.commits (seq, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
    values: [
      String(row.seq),
      row.hash,
      row.parentHash,
      row.committer,
      row.email,
      row.date,
      row.message,
      row.upstreamXid ?? null,
      row.upstreamCommitLsn === undefined ? null : formatLsn(row.upstreamCommitLsn),
      row.upstreamEndLsn === undefined ? null : formatLsn(row.upstreamEndLsn),
    ],
  });
}

/** Several commit rows in one statement (a batch's). */
export async function insertCommitRows(client: pg.Client, rows: CommitRow[]): Promise<void> {
  if (rows.length === 0) return;
  if (rows.length === 1) return insertCommitRow(client, rows[0]);
  const lsn = (v: bigint | undefined) => (v === undefined ? null : formatLsn(v));
  await client.query({
    name: "strata_commit_rows",
    text: `INSERT INTO strata.commits (seq, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn)
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::bigint[], $9::pg_lsn[], $10::pg_lsn[])`,
    values: [
      rows.map((r) => String(r.seq)),
      rows.map((r) => r.hash),
      rows.map((r) => r.parentHash),
      rows.map((r) => r.committer),
      rows.map((r) => r.email),
      rows.map((r) => r.date),
      rows.map((r) => r.message),
      rows.map((r) => (r.upstreamXid === undefined ? null : String(r.upstreamXid))),
      rows.map((r) => lsn(r.upstreamCommitLsn)),
      rows.map((r) => lsn(r.upstreamEndLsn)),
    ],
  });
}

/**
 * CTE `strata_o`: the one row the change applies to (LIMIT 1, so one of several identical rows in
 * a keyless table). Located by tableoid and ctid together: ctids repeat across partitions.
 */
function locateOne(target: TargetTable, where: string, withOldImage: boolean): string {
  const old = withOldImage
    ? `, to_jsonb(strata_s.*) AS strata_old, ${target.keyJson("strata_s")} AS strata_old_key`
    : "";
  return `strata_o AS (SELECT strata_s.tableoid AS strata_oid, strata_s.ctid AS strata_ctid${old} FROM ${target.qualified} strata_s WHERE ${where} LIMIT 1)`;
}
/**
 * Parts of a run's statement: the input columns' aliases, their array parameters (from `$first`),
 * and for a run of updates the join that finds each row by key and the SET list.
 */
function runSql(target: TargetTable, first: number) {
  const aliases = target.columns.map((_, i) => `strata_c${i}`);
  return {
    aliases,
    arrays: target.columns.map((_, i) => `$${i + first}::text[]`).join(", "),
    match: target.keyIndexes
      .map((i) => `strata_s.${target.columns[i].quoted} = strata_in.${aliases[i]}::${target.columns[i].type}`)
      .join(" AND "),
    assignments: target.columns.map((c, i) => `${c.quoted} = strata_o.${aliases[i]}::${c.type}`).join(", "),
  };
}

const LOCATED = "strata_t.tableoid = strata_o.strata_oid AND strata_t.ctid = strata_o.strata_ctid";

/**
 * A row's image as jsonb built from its typed values: `value(i)` is the SQL of column i's value.
 * Equal to to_jsonb() of the stored row when the values are the whole row as stored (see
 * collapsible()). jsonb_build_object takes at most 100 arguments: 50 columns a call.
 */
function rowImageSql(
  target: TargetTable,
  value: (i: number) => string,
  columns = target.columns.map((_, i) => i),
): string {
  const parts: string[] = [];
  for (let i = 0; i < columns.length; i += 50)
    parts.push(
      `jsonb_build_object(${columns
        .slice(i, i + 50)
        .map((c) => `${literal(target.columns[c].name)}, ${value(c)}`)
        .join(", ")})`,
    );
  return parts.join(" || ");
}

interface OpenTransaction {
  meta: UpstreamTransaction;
  /** Set once the first change has opened the store transaction. */
  started: boolean;
  hasher: CommitHasher | undefined;
  /** Schema changes and tables joining, named in the commit message. */
  notes: string[];
  ord: number;
  changes: number;
  date: string;
  message: string;
  /** A held table's changes applied later: a commit of its own, which moves no position. */
  replay: boolean;
}

export class Applier {
  /** End LSN of the last committed upstream transaction (0 when none). */
  position = 0n;
  /**
   * Where the store's WAL ended just after flush()'s last COMMIT, and where it was flushed then:
   * with synchronous_commit off on the apply connection, a commit is durable once the store's WAL
   * is flushed past it (see upstream/durable-acks.ts).
   */
  lastCommitWal = 0n;
  lastFlushedWal = 0n;
  /**
   * The replica began with Strata's own initial snapshot. A seeded replica (or one on a slot made
   * by hand) has the user's baseline, so tables first seen later are never copied into it.
   */
  private bootstrapped = false;
  private durableSeq = 0n;
  private durableHash: string | null = null;
  private seq = 0n;
  private head: string | null = null;
  private inStoreTx = false;
  private pendingEnd: bigint | undefined;
  private tx: OpenTransaction | undefined;
  private readonly relations = new Map<number, RelationMessage>();
  private readonly types = new Map<number, TypeMessage>();
  private readonly targets = new Map<number, TargetTable>();
  private readonly typeResolver: TypeResolver;
  private readonly statementNames = new Map<string, string>();
  /** Upstream tables by relation oid, as loaded from strata.upstream_tables (cleared on abort). */
  private readonly known = new Map<number, KnownTable | null>();
  /** Commit rows of the batch, written together by flush(). */
  private pendingCommits: CommitRow[] = [];
  /** Inserts waiting to be applied as one statement (see flushInserts). */
  private pendingInserts: PendingRun | undefined;
  /** Updates waiting to be applied as one statement per table (see flushUpdates). */
  private readonly pendingUpdates = new Map<TargetTable, PendingRun>();
  /**
   * The last statement sent and not yet waited for (the client runs them in order, so it is done
   * when all are), and the first failure among them.
   */
  private inflight: Promise<void> | undefined;
  private inflightError: Error | undefined;
  /** Statements sent and not yet waited for, and the bytes of values they carry. */
  private queued = 0;
  private queuedBytes = 0;
  /** Statements the store has not finished yet (the store is idle at 0: see feedIdleStore). */
  private unfinished = 0;
  /** Relations copied mid-stream: their changes committed before the LSN are skipped. */
  private readonly syncedBefore = new Map<number, bigint>();
  /** Tables whose changes are held (strata.held_tables), by upstream relation oid. */
  private readonly held = new Map<number, HeldTable>();
  /** The stream's latest Relation message of each relation, as received (held with changes). */
  private readonly rawRelations = new Map<number, Buffer>();
  /** The Relation message last held for each relation in this session. */
  private readonly heldRelation = new Map<number, Buffer>();
  /** Stand-in tables made for hash partitions' bounds in this session (evaluableBound). */
  private hashStandIns = 0;
  /** The held table whose changes are being replayed (so they are applied, not held again). */
  private replaying: number | undefined;
  /** Held tables whose last replay failed: the next attempt is a small one. */
  private readonly replayFailed = new Set<number>();
  /** Changes applied in the current batch (store transaction). */
  batchChanges = 0;
  batchTransactions = 0;
  /**
   * Statements applied that attached or detached a partition of a table published through its
   * root. A PostgreSQL 14 walsender keeps publishing such a partition's changes under its old
   * place for the rest of its session; the replicator starts a new one after them.
   */
  partitionMoves = 0;

  constructor(
    private readonly client: pg.Client,
    private readonly options: ApplierOptions,
  ) {
    this.typeResolver = createTypeResolver(client, this.types, options.defineUpstreamType);
  }

  /** Load the durable position and the head of the commit chain. */
  async init(): Promise<void> {
    const pos = await this.client.query<{ end_lsn: string; bootstrapped: boolean }>(
      "SELECT end_lsn::text, bootstrapped FROM strata.source_position WHERE slot_name = $1",
      [this.options.slot],
    );
    if (pos.rows[0]) this.position = parseLsn(pos.rows[0].end_lsn);
    this.bootstrapped = pos.rows[0]?.bootstrapped ?? false;
    const head = await this.client.query<{ seq: string; hash: string }>(
      "SELECT seq, hash FROM strata.commits ORDER BY seq DESC LIMIT 1",
    );
    if (head.rows[0]) {
      this.durableSeq = BigInt(head.rows[0].seq);
      this.durableHash = head.rows[0].hash;
    }
    this.seq = this.durableSeq;
    this.head = this.durableHash;
    this.held.clear();
    for (const table of await loadHeldTables(this.client, this.options.slot))
      this.held.set(table.relid, table);
  }

  /** Record a starting position (seeded LSN) when there is none yet. */
  async seedPosition(lsn: bigint): Promise<void> {
    await this.client.query(
      "INSERT INTO strata.source_position (slot_name, end_lsn) VALUES ($1, $2) ON CONFLICT (slot_name) DO NOTHING",
      [this.options.slot, formatLsn(lsn)],
    );
    await this.init();
  }

  /** The durable head of the commit chain: the next commit's parent. */
  get durableHead(): { seq: bigint; hash: string | null } {
    return { seq: this.durableSeq, hash: this.durableHash };
  }

  get inTransaction(): boolean {
    return this.tx !== undefined;
  }

  get hasUnflushed(): boolean {
    return this.inStoreTx;
  }

  relation(msg: RelationMessage, raw?: Buffer): void {
    if (raw) {
      // Kept as sent outside a streamed transaction (no xid), as every held description is read.
      const { xid, ...described } = msg;
      this.rawRelations.set(
        msg.relationOid,
        xid === undefined ? raw : encodePgoutput(described, { inStream: false }),
      );
    }
    // A held table's descriptions are held with its changes; a replay applies them in turn.
    if (this.isHeld(msg.relationOid)) return;
    const previous = this.relations.get(msg.relationOid);
    this.relations.set(msg.relationOid, msg);
    if (!previous || JSON.stringify(previous) !== JSON.stringify(msg)) this.targets.delete(msg.relationOid);
  }

  type(msg: TypeMessage): void {
    this.types.set(msg.typeOid, msg);
  }

  /**
   * An upstream transaction begins. Nothing is written until its first change: a transaction with
   * no row changes (all rolled back to savepoints, or touching only unpublished tables, which
   * PostgreSQL 14 still sends) becomes no commit, whether or not the primary streamed it.
   */
  beginTransaction(meta: UpstreamTransaction, heldFor?: string): void {
    const message = `replicated transaction ${meta.xid} (commit LSN ${formatLsn(meta.commitLsn)})`;
    this.tx = {
      meta,
      hasher: undefined,
      notes: [],
      started: false,
      ord: 0,
      changes: 0,
      // A replayed transaction lands now: its date orders it among the commits as it is placed.
      date: heldFor ? new Date().toISOString().replace("Z", "000Z") : pgTimeToIso(meta.commitTime),
      message: heldFor ? `${message}, held for ${heldFor} and applied later` : message,
      replay: heldFor !== undefined,
    };
  }

  private async startTransaction(tx: OpenTransaction): Promise<void> {
    if (tx.started) return;
    if (!this.inStoreTx) {
      // Not waited for, like the statements after it: the store runs them in order.
      await this.enqueue(this.client.query("BEGIN"), undefined, undefined, 0);
      this.inStoreTx = true;
      this.batchChanges = 0;
      this.batchTransactions = 0;
    }
    tx.started = true;
    // The header is sealed at commit: the message names schema changes found on the way.
    if (this.options.history) tx.hasher = new CommitHasher();
  }

  private async target(relationOid: number): Promise<TargetTable> {
    const cached = this.targets.get(relationOid);
    if (cached) return cached;
    const relation = this.relations.get(relationOid);
    if (!relation)
      throw new ApplyError(
        `a change refers to relation oid ${relationOid}, which the upstream never described`,
        "this is a protocol error; restart Strata and report it if it repeats",
      );
    const rel = `${relation.namespace}.${relation.name}`;
    const target = await this.followRelation(relation)
      .then(() => resolveTarget(this.client, relation, this.typeResolver, this.options.history))
      .catch((err) => {
        throw explainStoreError(err, rel);
      });
    this.targets.set(relationOid, target);
    return target;
  }

  private async loadKnown(relid: number): Promise<KnownTable | undefined> {
    if (this.known.has(relid)) return this.known.get(relid) ?? undefined;
    const { rows } = await this.client.query<{ rel: string; shape: TableShape; synced_lsn: string | null }>(
      "SELECT rel, shape, synced_lsn::text FROM strata.upstream_tables WHERE slot_name = $1 AND relid = $2",
      [this.options.slot, relid],
    );
    const found = rows[0]
      ? {
          rel: rows[0].rel,
          shape: rows[0].shape,
          syncedLsn: rows[0].synced_lsn ? parseLsn(rows[0].synced_lsn) : undefined,
        }
      : undefined;
    this.known.set(relid, found ?? null);
    if (found?.syncedLsn !== undefined) this.syncedBefore.set(relid, found.syncedLsn);
    return found;
  }

  private async saveKnown(relid: number, known: KnownTable): Promise<void> {
    this.known.set(relid, known);
    await this.client.query(
      `INSERT INTO strata.upstream_tables (slot_name, relid, rel, shape, synced_lsn) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (slot_name, relid) DO UPDATE SET rel = excluded.rel, shape = excluded.shape, synced_lsn = excluded.synced_lsn, updated_at = clock_timestamp()`,
      [
        this.options.slot,
        relid,
        known.rel,
        JSON.stringify(known.shape),
        known.syncedLsn === undefined ? null : formatLsn(known.syncedLsn),
      ],
    );
  }

  private async forgetKnown(relid: number): Promise<void> {
    this.known.set(relid, null);
    this.syncedBefore.delete(relid);
    await this.client.query("DELETE FROM strata.upstream_tables WHERE slot_name = $1 AND relid = $2", [
      this.options.slot,
      relid,
    ]);
  }

  /**
   * Run DDL on the replica as part of the open commit. `after` names the table once the DDL ran
   * (a rename's new name): history records its definition then, for remotes (remotes/remote-sql.ts).
   * With `alreadyRun`, the DDL is only recorded.
   */
  private async runSchemaChange(rel: string, ddl: string, after = rel, alreadyRun = false): Promise<void> {
    await this.settle();
    const tx = this.tx!;
    if (!alreadyRun) await this.client.query(ddl);
    tx.hasher?.addSchemaChange(rel, ddl);
    if (this.options.history)
      await this.client.query(
        `INSERT INTO strata.schema_changes (commit_seq, ord, rel, ddl, definition)
         VALUES ($1, $2, $3, $4, coalesce(strata.recorded_definition(strata.regclass_of($5)),
                                          CASE WHEN $4 LIKE 'DROP TABLE %' THEN '{"dropped": true}'::jsonb END))`,
        [String(this.seq + 1n), tx.ord, rel, ddl, after],
      );
    tx.ord++;
    tx.changes++;
  }

  /**
   * Record every row of a replica table as removed (truncate history), in the open commit: before
   * a table is dropped, or leaves its name behind, so that its history under that name is whole.
   * Returns the key columns used.
   */
  private async recordRemoval(rel: string, qualified: string): Promise<string[] | null> {
    await this.settle();
    const keys = await historyKeyColumns(this.client, rel, qualified);
    if (!this.options.history) return keys;
    const tx = this.tx!;
    await this.client.query(
      `INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_row)
       SELECT $1::bigint, $2::int, $3::text, 'T', strata.key_of(to_jsonb(strata_t.*), $4::text[]), to_jsonb(strata_t.*)
         FROM ${qualified} strata_t`,
      [String(this.seq + 1n), tx.ord, rel, keys],
    );
    tx.ord++;
    tx.changes++;
    return keys;
  }

  /**
   * A partition dropped, detached or truncated on the primary took its rows out of the root table,
   * which is what the replica has (published through the root): the root's rows within the
   * partition's bound are deleted, as history deletes, in this commit. A detached partition
   * replicated as a table of its own from now on (it was just created, empty) receives them: the
   * rows move, as on the primary. Returns whether anything was done.
   */
  private async removePartitionRows(
    partition: { oid: number; schema: string; name: string } & PartitionLeaving,
    how: "dropped" | "detached" | "truncated",
  ): Promise<boolean> {
    const detached = how === "detached";
    const tx = this.tx!;
    const root = await this.loadKnown(partition.root.oid);
    if (!root) return false;
    const qualified = qualifiedName(root.shape);
    // (An empty root: nothing to remove. A TRUNCATE of the root sends each partition's message
    // after the root's own Truncate: thousands of partitions cost a probe each, not a DELETE.)
    if (!(await replicaTableHasRows(this.client, qualified))) return false;
    const what = `${partition.schema}.${partition.name}`;
    const into = detached ? await this.movedInto(partition) : undefined;
    try {
      // In the try: a stand-in table that cannot be made holds this table, not the stream.
      const bound = partition.bound ? await this.evaluableBound(partition.bound, qualified) : undefined;
      if (!bound) {
        tx.notes.push(
          `the rows of ${how} partition ${what} stay in ${root.rel} on the replica (its bound, a hash of an expression, cannot be evaluated here; delete them through ${root.rel} on the primary before dropping, detaching or truncating it)`,
        );
        return false;
      }
      const keys = await historyKeyColumns(this.client, root.rel, qualified);
      // The bound names the root's columns unqualified; nothing else is in scope here.
      const gone = `strata_gone AS (DELETE FROM ${qualified} WHERE ${bound} RETURNING *)`;
      const moved = into
        ? `, strata_moved AS (INSERT INTO ${into.qualified} (${into.columns}) SELECT ${into.columns} FROM strata_gone)`
        : "";
      const { rowCount } = this.options.history
        ? await this.client.query(
            `WITH ${gone}${moved}
             INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_row)
             SELECT $1::bigint, $2::int + (row_number() OVER ())::int - 1, $3::text, 'D',
                    strata.key_of(to_jsonb(strata_gone.*), $4::text[]), to_jsonb(strata_gone.*)
               FROM strata_gone`,
            [String(this.seq + 1n), tx.ord, root.rel, keys],
          )
        : await this.client.query(`WITH ${gone}${moved} SELECT 1 FROM strata_gone`);
      tx.hasher?.addPartitionRowsLeft(root.rel, what, partition.bound!, into?.rel);
      // Each row is a change of its own, in order.
      tx.ord += Math.max(rowCount ?? 0, 1);
      tx.changes++;
      if (into && this.options.history && (rowCount ?? 0) > 0)
        await this.recordArrival(into.rel, into.qualified);
      return true;
    } catch (err) {
      const explained = explainStoreError(err, root.rel);
      throw withLsn(withRelid(explained, root.rel, partition.root.oid), tx.meta.commitLsn);
    }
  }

  /**
   * A table attached as a partition on the primary brought its rows into the root without row
   * changes. Replicated until now as a table of its own, its replica table holds them: they move
   * to the root, as history deletes there and inserts here, in this commit. (It is not streamed
   * any more; a detach moves the rows back.) Otherwise the replica never had them, and the commit
   * says so. Returns whether anything was done.
   */
  private async addAttachedRows(table: NonNullable<DdlMessage["attached"]>[number]): Promise<boolean> {
    const tx = this.tx!;
    const root = await this.loadKnown(table.root.oid);
    if (!root) return false;
    const qualified = qualifiedName(root.shape);
    if ((await replicaTableHasRows(this.client, qualified)) === undefined) return false;
    const source = await this.loadKnown(table.oid);
    const sourceQualified = source && qualifiedName(source.shape);
    if (
      !source ||
      !sourceQualified ||
      (await replicaTableHasRows(this.client, sourceQualified)) === undefined
    ) {
      if (table.hasRows)
        tx.notes.push(
          `the rows of ${table.schema}.${table.name}, attached to ${root.rel} on the primary, are not on the replica (it was not replicated as a table of its own); to copy ${root.rel} anew, drop it from the publication and add it again on the primary`,
        );
      return false;
    }
    const columns = root.shape.columns.map((c) => quoteIdent(c.name)).join(", ");
    try {
      const moved = `strata_moved AS (DELETE FROM ${sourceQualified} RETURNING *),
        strata_n AS (INSERT INTO ${qualified} (${columns}) SELECT ${columns} FROM strata_moved RETURNING *)`;
      if (this.options.history) {
        const seq = String(this.seq + 1n);
        const rootKeys = await historyKeyColumns(this.client, root.rel, qualified);
        const sourceKeys = await historyKeyColumns(this.client, source.rel, sourceQualified);
        const { rowCount } = await this.client.query(
          `WITH ${moved},
             strata_left AS (
               INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_row)
               SELECT $1::bigint, $2::int + (row_number() OVER ())::int - 1, $3::text, 'D',
                      strata.key_of(to_jsonb(strata_moved.*), $4::text[]), to_jsonb(strata_moved.*)
                 FROM strata_moved)
           INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, new_row)
           SELECT $1::bigint, $2::int + (SELECT count(*) FROM strata_moved)::int + (row_number() OVER ())::int - 1, $5::text, 'I',
                  strata.key_of(to_jsonb(strata_n.*), $6::text[]), to_jsonb(strata_n.*)
             FROM strata_n`,
          [seq, tx.ord, source.rel, sourceKeys, root.rel, rootKeys],
        );
        // Each row left and arrived as changes of their own, in order.
        tx.ord += Math.max(2 * (rowCount ?? 0), 1);
      } else await this.client.query(`WITH ${moved} SELECT 1 FROM strata_n`);
      tx.hasher?.addPartitionRowsJoined(root.rel, source.rel);
      tx.changes++;
      return true;
    } catch (err) {
      const explained = explainStoreError(err, root.rel);
      throw withLsn(withRelid(explained, root.rel, table.root.oid), tx.meta.commitLsn);
    }
  }

  /**
   * A partition's bound as the replica can evaluate it: a hash partition's is pointed at a stand-in
   * table with its key (partition-bound.ts), dropped when the store transaction commits. Undefined
   * when a hash key is an expression.
   */
  private async evaluableBound(bound: string, rootQualified: string): Promise<string | undefined> {
    const calls = findHashCalls(bound);
    if (!calls) return undefined;
    const oids: number[] = [];
    for (const call of calls) {
      const name = `strata_hash_bound_${this.hashStandIns++}`;
      await this.client.query(
        `CREATE TEMP TABLE ${name} (LIKE ${rootQualified}) PARTITION BY HASH (${call.columns.map(quoteIdent).join(", ")}) ON COMMIT DROP`,
      );
      const { rows } = await this.client.query<{ oid: string }>(
        `SELECT 'pg_temp.${name}'::regclass::oid AS oid`,
      );
      oids.push(Number(rows[0].oid));
    }
    return pointHashCalls(bound, calls, oids);
  }

  /** The replica table a detached partition's rows move to: one replicated from now on, still empty. */
  private async movedInto(partition: {
    oid: number;
  }): Promise<{ rel: string; qualified: string; columns: string } | undefined> {
    const known = await this.loadKnown(partition.oid);
    if (!known) return undefined;
    const qualified = qualifiedName(known.shape);
    if ((await replicaTableHasRows(this.client, qualified)) !== false) return undefined;
    return {
      rel: known.rel,
      qualified,
      columns: known.shape.columns.map((c) => quoteIdent(c.name)).join(", "),
    };
  }

  /**
   * Rows that arrived in a replica table without row changes (a detached partition's), as it
   * enters history at this commit: a snapshot base by its key, or its rows as inserts without one.
   */
  private async recordArrival(rel: string, qualified: string): Promise<void> {
    const tx = this.tx!;
    const keys = await historyKeyColumns(this.client, rel, qualified);
    if (keys?.length) {
      await this.client.query(
        "INSERT INTO strata.snapshot_bases (rel, commit_seq, key_columns) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [rel, String(this.seq + 1n), keys],
      );
    } else {
      const { rowCount } = await this.client.query(
        `INSERT INTO strata.changes (commit_seq, ord, rel, op, new_row)
         SELECT $1::bigint, $2::int + (row_number() OVER ())::int - 1, $3::text, 'I', to_jsonb(strata_t.*) FROM ${qualified} strata_t`,
        [String(this.seq + 1n), tx.ord, rel],
      );
      tx.ord += Math.max(rowCount ?? 0, 1);
    }
    tx.changes++;
  }

  /** A table renamed on the primary (same oid, new name) is renamed on the replica. */
  private async followRename(known: KnownTable | undefined, next: { schema: string; name: string }) {
    if (!known || known.rel === `${next.schema}.${next.name}`) return;
    const old = known.shape;
    const oldQualified = qualifiedName(old);
    if ((await replicaTableHasRows(this.client, oldQualified)) === undefined) return;
    if ((await replicaTableHasRows(this.client, qualifiedName(next))) !== undefined) return;
    await dropTableSurface(this.client, old.schema, old.name);
    // History is per name: the old name's ends with its rows removed, the new name's begins with
    // them as a snapshot base at this commit.
    const keys = await this.recordRemoval(known.rel, oldQualified);
    const newRel = `${next.schema}.${next.name}`;
    if (this.options.history && keys?.length) {
      await this.client.query(
        "INSERT INTO strata.snapshot_bases (rel, commit_seq, key_columns) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [newRel, String(this.seq + 1n), keys],
      );
    } else if (this.options.history) {
      // No key to find rows by later: the rows are written under the new name.
      await this.client.query(
        `INSERT INTO strata.changes (commit_seq, ord, rel, op, new_row)
         SELECT $1::bigint, $2::int, $3::text, 'I', to_jsonb(strata_t.*) FROM ${oldQualified} strata_t`,
        [String(this.seq + 1n), this.tx!.ord++, newRel],
      );
    }
    let at = oldQualified;
    if (old.schema !== next.schema) {
      await this.client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(next.schema)}`);
      await this.runSchemaChange(
        known.rel,
        `ALTER TABLE ${at} SET SCHEMA ${quoteIdent(next.schema)}`,
        `${next.schema}.${old.name}`,
      );
      at = `${quoteIdent(next.schema)}.${quoteIdent(old.name)}`;
    }
    if (old.name !== next.name)
      await this.runSchemaChange(known.rel, `ALTER TABLE ${at} RENAME TO ${quoteIdent(next.name)}`, newRel);
    this.tx!.notes.push(`${known.rel} renamed to ${next.schema}.${next.name}`);
  }

  /** Apply `statements` to the replica table, with its history view rebuilt around them. */
  private async applyPlan(shape: TableShape, statements: string[]): Promise<void> {
    if (statements.length === 0) return this.recordReplicaRenames(shape);
    const rel = `${shape.schema}.${shape.name}`;
    await dropTableSurface(this.client, shape.schema, shape.name);
    for (const ddl of statements) await this.runSchemaChange(rel, ddl);
    this.tx!.notes.push(...statements);
    if (this.options.history) await ensureTableSurface(this.client, shape.schema, shape.name);
  }

  /**
   * Columns renamed on the replica by hand (the remedy for a rename the stream cannot tell from a
   * drop and an add) are recorded as the schema change that renamed them, so that history reads
   * the versions from before it under the new names (history/column-renames-sql.ts).
   */
  private async recordReplicaRenames(shape: TableShape): Promise<void> {
    if (!this.options.history) return;
    const table = qualifiedName(shape);
    const { rows } = await this.client.query<{ renamed: Record<string, string> | null }>(
      "SELECT strata.pending_renames(to_regclass($1)) AS renamed",
      [table],
    );
    const renamed = rows[0]?.renamed;
    if (!renamed) return;
    const ddl = Object.entries(renamed)
      .map(([from, to]) => `ALTER TABLE ${table} RENAME COLUMN ${quoteIdent(from)} TO ${quoteIdent(to)}`)
      .join("; ");
    await this.runSchemaChange(`${shape.schema}.${shape.name}`, ddl, undefined, true);
    this.tx!.notes.push(`${ddl} (on the replica)`);
    await ensureTableSurface(this.client, shape.schema, shape.name);
  }

  /**
   * Before the first change to a relation (in this session, or after it was described anew): bring
   * the replica table to the relation's shape, or copy a table that joins the replica mid-stream.
   */
  private async followRelation(relation: RelationMessage): Promise<void> {
    await this.settle();
    const columns: ColumnShape[] = [];
    // One at a time: the resolver queries the store, and a pg client runs one query at a time.
    for (const c of relation.columns) {
      const type = await this.typeResolver.typeName(c.typeOid, c.typeMod);
      columns.push({ name: c.name, typeOid: c.typeOid, typeMod: c.typeMod, type });
    }
    const next: TableShape = { schema: relation.namespace, name: relation.name, columns };
    const rel = `${next.schema}.${next.name}`;
    const known = await this.loadKnown(relation.relationOid);
    if (!known && this.options.upstreamAttnums) {
      // Taken only if the primary's columns are still the ones the message names: DDL since then
      // would make them another shape's attnums.
      const attnums = await this.options.upstreamAttnums(relation.relationOid);
      if (attnums.size === next.columns.length && next.columns.every((c) => attnums.has(c.name)))
        for (const c of next.columns) c.attnum = attnums.get(c.name);
    }
    await this.followRename(known, next);
    const replica = await readReplicaState(this.client, next.schema, next.name);
    if (replica) {
      const adding = known ? next.columns.filter((c) => !replica.columns.has(c.name)).map((c) => c.name) : [];
      const missing =
        adding.length && this.options.upstreamMissingValues
          ? await this.options.upstreamMissingValues(relation.relationOid, adding)
          : new Map<string, string>();
      await this.applyPlan(next, planTableChanges(known?.shape, next, replica, false, new Set(), missing));
    } else await createTable(this.client, relation, this.typeResolver);
    // A table seen for the first time whose replica table is empty joins mid-stream: it is held
    // while its rows are copied. (One with rows was loaded by an initial snapshot or by the user:
    // adopted.)
    if (
      !known &&
      this.bootstrapped &&
      this.options.copyJoiningTables &&
      !(await replicaTableHasRows(this.client, qualifiedName(next)))
    ) {
      await this.saveKnown(relation.relationOid, { rel, shape: next, syncedLsn: undefined });
      const table: HeldTable = { relid: relation.relationOid, rel, reason: "joining", error: null };
      // The description the copy selects by (without a streamed transaction's xid).
      const { xid: _, ...described } = relation;
      await holdTable(
        this.client,
        this.options.slot,
        table,
        this.tx!.meta.commitLsn,
        encodePgoutput(described, { inStream: false }),
      );
      this.held.set(relation.relationOid, table);
      return;
    }
    const shape = mergeShape(known?.shape, next);
    if (!known || JSON.stringify(shape) !== JSON.stringify(known.shape) || known.rel !== rel)
      await this.saveKnown(relation.relationOid, { rel, shape, syncedLsn: known?.syncedLsn });
  }

  /**
   * A table that joined the replica mid-stream has been copied (in its own store transaction,
   * under a snapshot taken then): its commit says so, and its changes committed before that
   * snapshot are skipped from now on, since the copy holds them.
   */
  private async completeJoin(
    relation: RelationMessage,
    copied: { lsn: bigint; rows: number; bytes: number; sha256: Buffer },
  ): Promise<void> {
    const tx = this.tx!;
    await this.startTransaction(tx);
    const known = await this.loadKnown(relation.relationOid);
    const next = known?.shape ?? { schema: relation.namespace, name: relation.name, columns: [] };
    const rel = `${next.schema}.${next.name}`;
    tx.hasher?.addSnapshotTable(
      rel,
      relation.columns.map((c) => c.name),
    );
    tx.hasher?.addSnapshotChunk(copied.sha256, copied.rows, copied.bytes);
    tx.hasher?.addSnapshotTableEnd(copied.rows, copied.bytes);
    const keys =
      relation.replicaIdentity === "f" ? [] : relation.columns.filter((c) => c.isKey).map((c) => c.name);
    if (this.options.history && copied.rows > 0 && keys.length > 0) {
      // As for an initial snapshot: the copy's versions are a snapshot base, not history rows.
      await this.client.query(
        "INSERT INTO strata.snapshot_bases (rel, commit_seq, key_columns) VALUES ($1, $2, $3)",
        [rel, String(this.seq + 1n), keys],
      );
    } else if (this.options.history && copied.rows > 0) {
      await this.client.query(
        `INSERT INTO strata.changes (commit_seq, ord, rel, op, new_row)
         SELECT $1::bigint, $2::int, $3::text, 'I', to_jsonb(strata_t.*) FROM ${qualifiedName(next)} strata_t`,
        [String(this.seq + 1n), tx.ord, rel],
      );
    }
    tx.ord++;
    tx.changes++;
    if (this.options.history) {
      // Its definition as it enters history, for pushes (strata.table_entries).
      await this.client.query("SELECT strata.note_table_entry($1, $2)", [rel, String(this.seq + 1n)]);
      // Made here too: a table found in the catalog may have had no change resolved yet.
      await ensureTableSurface(this.client, next.schema, next.name);
    }
    this.syncedBefore.set(relation.relationOid, copied.lsn);
    await this.saveKnown(relation.relationOid, { rel, shape: next, syncedLsn: copied.lsn });
  }

  /** Whether changes to this relation are held rather than applied. */
  private isHeld(relid: number): boolean {
    return this.replaying !== relid && this.held.has(relid);
  }

  /**
   * Keep a change to a held table aside, after the Relation message it was sent under (once per
   * description). Sent with the batch, so it is durable exactly when the position is.
   */
  private async hold(relid: number, raw: Buffer | undefined, inStream: boolean): Promise<void> {
    const tx = this.tx!;
    if (!raw)
      throw new ApplyError(
        `a change to the held table ${this.held.get(relid)?.rel} arrived without its message bytes`,
        "this is a bug in Strata; restart it and report it",
      );
    const relation = this.rawRelations.get(relid);
    if (relation && !this.heldRelation.get(relid)?.equals(relation)) {
      const q = holdMessageQuery(this.options.slot, relid, "R", tx.meta, false, relation);
      await this.enqueue(this.client.query(q.text, q.values), undefined, this.held.get(relid)!.rel, 0);
      this.heldRelation.set(relid, relation);
    }
    const q = holdMessageQuery(this.options.slot, relid, "C", tx.meta, inStream, raw);
    await this.enqueue(this.client.query(q.text, q.values), undefined, this.held.get(relid)!.rel, raw.length);
    this.batchChanges++;
  }

  /** Whether tables that join mid-stream are copied (and so may be looked for in the catalog). */
  get copiesJoiningTables(): boolean {
    return this.bootstrapped && Boolean(this.options.copyJoiningTables);
  }

  /**
   * A table found in the publication (by the primary's catalog) before any change to it was
   * streamed: if the replica has not had it, its replica table is made and it is held as joining
   * (its copy then starts), exactly as its first change would have done. Between batches only.
   * Returns whether it was taken.
   */
  async joinFromCatalog(relation: RelationMessage): Promise<boolean> {
    if (this.tx || this.inStoreTx) throw new Error("joinFromCatalog() inside a batch");
    const relid = relation.relationOid;
    if (this.held.has(relid) || (await this.loadKnown(relid))) return false;
    await this.client.query("BEGIN");
    this.inStoreTx = true;
    this.beginTransaction({ xid: 0, commitLsn: this.position, commitTime: 0n });
    try {
      await this.startTransaction(this.tx!);
      await this.followRelation(relation);
      this.tx = undefined;
      // Not held: the replica table had rows (adopted, as the stream's first change will decide).
      if (!this.held.has(relid)) {
        await this.abort();
        return false;
      }
      await this.client.query("COMMIT");
      this.inStoreTx = false;
      return true;
    } catch (err) {
      this.held.delete(relid);
      await this.abort();
      throw err;
    }
  }

  /**
   * A table that left the publication and is in it again: what changed while it was out never came
   * through the stream, so its rows are removed (as truncate history, in a commit that says why)
   * and it joins again like a new table — copied under a snapshot taken now. Between batches only.
   */
  async rejoinTable(relation: RelationMessage): Promise<boolean> {
    if (this.tx || this.inStoreTx) throw new Error("rejoinTable() inside a batch");
    const relid = relation.relationOid;
    const known = await this.loadKnown(relid);
    if (!known || this.held.has(relid)) return false;
    const qualified = qualifiedName(known.shape);
    await this.client.query("BEGIN");
    this.inStoreTx = true;
    this.beginTransaction({ xid: 0, commitLsn: this.position, commitTime: 0n }, known.rel);
    this.tx!.message =
      `${known.rel} was added to the publication again: its rows are copied anew (what changed while it was out of the publication never reached the replica)`;
    try {
      await this.startTransaction(this.tx!);
      if ((await replicaTableHasRows(this.client, qualified)) !== undefined) {
        this.tx!.hasher?.addTruncate([known.rel], false, false);
        await this.recordRemoval(known.rel, qualified);
        await this.client.query(`TRUNCATE ${qualified}`);
      }
      this.tx!.changes++;
      await this.forgetKnown(relid);
      await this.commitTransaction(this.position);
      await this.flush();
    } catch (err) {
      await this.abort();
      throw err;
    }
    this.targets.delete(relid);
    return this.joinFromCatalog(relation);
  }

  /** The tables held now (for the status row). */
  get heldTables(): HeldTable[] {
    return [...this.held.values()];
  }

  /**
   * The table an error is about, if holding that table would let the rest of the stream go on: an
   * ApplyError naming a table the stream described, not held already.
   */
  holdFor(err: unknown): HeldTable | undefined {
    if (!(err instanceof ApplyError) || !err.context.table) return undefined;
    let relid = err.context.relid;
    if (relid === undefined)
      for (const [oid, r] of this.relations)
        if (`${r.namespace}.${r.name}` === err.context.table) relid = oid;
    if (relid === undefined || this.held.has(relid)) return undefined;
    return { relid, rel: err.context.table, reason: "schema", error: err.message };
  }

  /** Hold a table after an error (the failed batch has been rolled back: see holdFor). */
  async holdAfterError(table: HeldTable): Promise<void> {
    await holdTable(this.client, this.options.slot, table, this.position);
    this.held.set(table.relid, table);
  }

  /**
   * Replay a held table's changes, oldest first, each upstream transaction as a commit of its own:
   * one chunk per call, in one store transaction that also forgets them. Called between batches.
   * A joining table first waits for its copy, which becomes a commit. Returns "released" when
   * none are left (the table is then streamed again), "more" when another chunk waits, and
   * "held" when it cannot go on yet (no copy yet, or the changes still fail: the error is kept).
   */
  async replayHeld(
    relid: number,
    apply: (msg: PgoutputMessage, raw: Buffer) => Promise<void>,
  ): Promise<"released" | "more" | "held"> {
    const table = this.held.get(relid);
    if (!table) return "released";
    if (this.tx || this.inStoreTx) throw new Error("replayHeld() inside a batch");
    let copy: Awaited<ReturnType<typeof readHeldCopy>>;
    if (table.reason === "joining") {
      copy = await readHeldCopy(this.client, this.options.slot, relid);
      if (!copy) return "held";
    }
    const limit = this.replayFailed.has(relid) ? RETRY_CHUNK : REPLAY_CHUNK;
    const messages = await readHeldMessages(this.client, this.options.slot, relid, limit);
    let chunk = messages;
    if (messages.length > limit) {
      // Whole upstream transactions only, unless the first alone is larger than a chunk.
      const last = messages[limit];
      const cut = messages.findIndex((m) => m.xid === last.xid && m.commitLsn === last.commitLsn);
      chunk = messages.slice(0, cut);
      if (!chunk.some((m) => m.kind === "C")) chunk = messages.slice(0, limit);
    }
    // A table held for an error with no change held yet: whether its description can be followed
    // now is tried, and rolled back (the stream follows it for real with the next change).
    const probe = table.reason === "schema" && !messages.some((m) => m.kind === "C");
    const description = chunk.filter((m) => m.kind === "R").at(-1)?.message ?? this.rawRelations.get(relid);
    if (probe && !description) return "held";
    await this.client.query("BEGIN");
    this.inStoreTx = true;
    this.batchChanges = 0;
    this.batchTransactions = 0;
    this.replaying = relid;
    try {
      if (probe && description) {
        this.relation(decodePgoutput(description, { inStream: false }) as RelationMessage);
        this.beginTransaction({ xid: 0, commitLsn: this.position, commitTime: 0n }, table.rel);
        await this.startTransaction(this.tx!);
        await this.target(relid);
        this.replaying = undefined;
        await this.abort();
        await this.client.query("BEGIN");
        await releaseTable(this.client, this.options.slot, relid);
        await this.client.query("COMMIT");
        this.released(relid);
        return "released";
      }
      if (copy) {
        const relation = decodePgoutput(copy.relation, { inStream: false }) as RelationMessage;
        this.beginTransaction({ xid: 0, commitLsn: copy.lsn, commitTime: 0n }, table.rel);
        this.tx!.message =
          `${table.rel} joined the replica (${copy.rows} rows copied at ${formatLsn(copy.lsn)})`;
        await this.completeJoin(relation, copy);
        await this.commitTransaction(copy.lsn);
        await setHoldReason(this.client, this.options.slot, relid, "catching up");
      }
      await this.loadKnown(relid);
      const skipBefore = this.syncedBefore.get(relid);
      let keep: HeldMessage | undefined;
      /** The first message of the replayed upstream transaction open now. */
      let group: HeldMessage | undefined;
      for (const m of chunk) {
        const msg = decodePgoutput(m.message, { inStream: m.inStream });
        if (m.kind === "R") {
          keep = m;
          this.relation(msg as RelationMessage);
          continue;
        }
        // The copy holds what committed before its snapshot.
        if (skipBefore !== undefined && m.commitLsn < skipBefore) continue;
        if (group && (group.xid !== m.xid || group.commitLsn !== m.commitLsn)) {
          await this.commitTransaction(group.commitLsn);
          group = undefined;
        }
        if (!group) {
          this.beginTransaction(m, table.rel);
          group = m;
        }
        await apply(msg.tag === "Truncate" ? { ...msg, relationOids: [relid] } : msg, m.message);
      }
      if (group) await this.commitTransaction(group.commitLsn);
      // What was sent ahead must have succeeded before the held changes are forgotten.
      await this.settle();
      const last = chunk.at(-1);
      if (last) await dropHeldMessages(this.client, this.options.slot, relid, last.id, keep?.id);
      const released = !(await hasHeldChanges(this.client, this.options.slot, relid));
      if (released) await releaseTable(this.client, this.options.slot, relid);
      await this.flush();
      this.replayFailed.delete(relid);
      if (!released) {
        if (copy) this.held.set(relid, { ...table, reason: "catching up" });
        return "more";
      }
      this.released(relid);
      return "released";
    } catch (err) {
      this.replaying = undefined;
      await this.abort();
      if (!(err instanceof ApplyError)) throw err;
      this.replayFailed.add(relid);
      const error = err.message;
      if (error !== table.error) {
        await setHoldError(this.client, this.options.slot, relid, error);
        this.held.set(relid, { ...table, error });
      }
      return "held";
    } finally {
      this.replaying = undefined;
    }
  }

  /** A table is no longer held: from now on the stream's own description of it applies. */
  private released(relid: number): void {
    this.held.delete(relid);
    this.heldRelation.delete(relid);
    this.replayFailed.delete(relid);
    this.replaying = undefined;
    const current = this.rawRelations.get(relid);
    if (current) this.relation(decodePgoutput(current, { inStream: false }) as RelationMessage);
    this.targets.delete(relid);
  }

  /** Changes of a table copied mid-stream that the copy already holds. */
  private inCopy(relationOid: number): boolean {
    const before = this.syncedBefore.get(relationOid);
    return before !== undefined && this.tx !== undefined && this.tx.meta.commitLsn < before;
  }

  /**
   * A DDL statement run on the primary, as the event trigger describes it: each table it created
   * or altered is brought to the shape the primary's catalog gives, each table it dropped is
   * dropped. Part of the replicated transaction's commit.
   */
  async applyDdl(message: DdlMessage, publication: string, raw?: Buffer, inStream = false): Promise<void> {
    const tx = this.tx;
    if (!tx)
      throw new ApplyError(
        "a DDL message arrived outside a transaction",
        "this is a protocol error; restart Strata",
      );
    await this.startTransaction(tx);
    await this.settle();
    let touched = false;
    const notesBefore = tx.notes.length;
    // A held table's part of the statement is held with its changes (and replayed on its own).
    const replaying = this.replaying;
    const tables = (message.tables ?? []).filter((t) => replaying === undefined || t.oid === replaying);
    const dropped = (message.dropped ?? []).filter(
      (d) => replaying === undefined || (d.type === "table" && d.oid === replaying),
    );
    // Partitions whose rows leave their root (published through it) with this statement; the
    // root's own drop, if it is dropped too, records them.
    const droppedOids = new Set(dropped.map((d) => d.oid));
    const leaving = [
      ...(message.dropped ?? [])
        .filter((d) => d.type === "table")
        .map((d) => ({ ...d, how: "dropped" as const })),
      ...(message.detached ?? []).map((d) => ({ ...d, how: "detached" as const })),
      ...(message.truncated ?? []).map((d) => ({ ...d, how: "truncated" as const })),
    ].filter(
      (p): p is typeof p & PartitionLeaving =>
        p.root !== undefined &&
        !droppedOids.has(p.root.oid) &&
        (replaying === undefined || p.root.oid === replaying),
    );
    const attached = (message.attached ?? []).filter(
      (a) => replaying === undefined || a.root.oid === replaying,
    );
    if (attached.length > 0 || leaving.some((p) => p.how === "detached")) this.partitionMoves++;
    const heldHere = new Set<number>();
    for (const oid of [
      ...tables.map((t) => t.oid),
      ...dropped.map((d) => d.oid),
      ...leaving.map((p) => p.root.oid),
      ...attached.map((a) => a.root.oid),
    ])
      if (this.isHeld(oid) && !heldHere.has(oid)) {
        heldHere.add(oid);
        await this.hold(oid, raw, inStream);
      }
    for (const table of tables) {
      if (!table.publications.includes(publication) || heldHere.has(table.oid)) continue;
      const { oid, publications: _, renamedColumns, ...shape } = table;
      const rel = `${shape.schema}.${shape.name}`;
      try {
        const known = await this.loadKnown(oid);
        await this.followRename(known, shape);
        const replica = await readReplicaState(this.client, shape.schema, shape.name);
        // A table new to this replica but not created by this statement was added to the
        // publication with its rows: its first change copies it (joinTable), so nothing is
        // recorded here that would make it look known.
        if (
          !known &&
          !replica &&
          this.bootstrapped &&
          this.options.copyJoiningTables &&
          message.tag !== "CREATE TABLE"
        )
          continue;
        if (!replica) {
          await this.client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(shape.schema)}`);
          for (const ddl of createTableStatements(shape)) await this.runSchemaChange(rel, ddl);
          if (this.options.history) await ensureTableSurface(this.client, shape.schema, shape.name);
        } else {
          await this.applyPlan(
            shape,
            planTableChanges(known?.shape, shape, replica, true, new Set(renamedColumns ?? [])),
          );
        }
        await this.saveKnown(oid, { rel, shape, syncedLsn: known?.syncedLsn });
      } catch (err) {
        const explained = explainStoreError(err, rel);
        throw withLsn(withRelid(explained, rel, oid), tx.meta.commitLsn);
      }
      this.targets.delete(oid);
      touched = true;
    }
    for (const partition of leaving) {
      if (heldHere.has(partition.root.oid)) continue;
      if (await this.removePartitionRows(partition, partition.how)) touched = true;
    }
    for (const table of attached) {
      if (heldHere.has(table.root.oid)) continue;
      if (await this.addAttachedRows(table)) touched = true;
    }
    for (const gone of dropped) {
      if (heldHere.has(gone.oid)) continue;
      const qualified = qualifiedName(gone);
      if (gone.type === "table") {
        const known = await this.loadKnown(gone.oid);
        if (!known) continue;
        await dropTableSurface(this.client, gone.schema, gone.name);
        if ((await replicaTableHasRows(this.client, qualified)) !== undefined)
          await this.recordRemoval(known.rel, qualified);
        await this.runSchemaChange(known.rel, `DROP TABLE IF EXISTS ${qualified}`);
        await this.forgetKnown(gone.oid);
        this.targets.delete(gone.oid);
        touched = true;
      } else if (gone.type === "index") {
        const exists = await this.client.query("SELECT to_regclass($1) IS NOT NULL AS ok", [qualified]);
        if (!exists.rows[0].ok) continue;
        await this.runSchemaChange(`${gone.schema}.${gone.name}`, `DROP INDEX IF EXISTS ${qualified}`);
        touched = true;
      }
    }
    // The statement as the user wrote it names the change better than the DDL that followed it.
    tx.notes.length = notesBefore;
    if (touched) tx.notes.push(message.query.trim().replace(/\s+/g, " ").slice(0, 500));
  }

  /**
   * One row change or truncate. `raw` is its pgoutput message as received (`inStream`: inside a
   * streamed transaction), kept instead of applied when the table is held.
   */
  async applyChange(msg: RowChange | TruncateMessage, raw?: Buffer, inStream = false): Promise<void> {
    const tx = this.tx;
    if (!tx)
      throw new ApplyError(
        "a row change arrived outside a transaction",
        "this is a protocol error; restart Strata",
      );
    await this.startTransaction(tx);
    if (msg.tag === "Truncate") {
      const held = msg.relationOids.filter((oid) => this.isHeld(oid));
      for (const oid of held) await this.hold(oid, raw, inStream);
      if (held.length === 0) return this.applyTruncate(msg);
      const rest = msg.relationOids.filter((oid) => !held.includes(oid));
      return rest.length ? this.applyTruncate({ ...msg, relationOids: rest }) : undefined;
    }
    if (this.isHeld(msg.relationOid)) return this.hold(msg.relationOid, raw, inStream);
    const target = await this.target(msg.relationOid).catch((err) => {
      const r = this.relations.get(msg.relationOid);
      throw withRelid(err, r && `${r.namespace}.${r.name}`, msg.relationOid);
    });
    // A table that joined just now is held while it is copied.
    if (this.isHeld(msg.relationOid)) return this.hold(msg.relationOid, raw, inStream);
    if (this.inCopy(msg.relationOid)) return;
    const ord = tx.ord++;
    tx.changes++;
    this.batchChanges++;
    try {
      switch (msg.tag) {
        case "Insert":
          tx.hasher?.addRowChange(target.rel, "I", target.columnNames, undefined, msg.newTuple);
          await this.insert(target, msg.newTuple, ord);
          break;
        case "Update":
          tx.hasher?.addRowChange(target.rel, "U", target.columnNames, msg.oldTuple, msg.newTuple);
          await this.update(target, msg, ord);
          break;
        case "Delete":
          tx.hasher?.addRowChange(target.rel, "D", target.columnNames, msg.oldTuple, undefined);
          await this.delete(target, msg, ord);
          break;
        default: {
          const never: never = msg;
          throw new Error(`unexpected change ${(never as { tag: string }).tag}`);
        }
      }
    } catch (err) {
      const explained = explainStoreError(err, target.rel);
      throw withLsn(withRelid(explained, target.rel, msg.relationOid), tx.meta.commitLsn);
    }
  }

  /**
   * Run one of the generated per-table statements as a named prepared statement: the store parses
   * and plans each statement shape once per connection instead of once per change.
   */
  private exec(text: string, values: unknown[]): Promise<pg.QueryResult> {
    let name = this.statementNames.get(text);
    if (!name) {
      name = `strata_apply_${this.statementNames.size + 1}`;
      this.statementNames.set(text, name);
    }
    const done = this.client.query({ name, text, values });
    this.unfinished++;
    const finished = () => {
      this.unfinished--;
    };
    done.then(finished, finished);
    return done;
  }

  /**
   * Between upstream transactions: if the store has finished every statement sent, send it the
   * pending runs now rather than when they fill. Otherwise the store sits idle at the start of
   * each batch while Strata decodes the first thousand rows of every table's run, and a busy
   * store lets the runs grow, which is when they pay.
   */
  async feedIdleStore(): Promise<void> {
    if (this.tx || this.unfinished > 0) return;
    // Not a row at a time: each statement has its fixed cost, and a run's repeated keys collapse.
    let rows = this.pendingInserts?.seqs.length ?? 0;
    for (const run of this.pendingUpdates.values()) rows += run.seqs.length;
    if (rows < FEED_MIN_ROWS) return;
    if (this.pendingInserts) await this.flushInserts();
    for (const target of [...this.pendingUpdates.keys()]) await this.flushUpdates(target);
  }

  private historyParams(ord: number, target: TargetTable): unknown[] {
    return [String(this.seq + 1n), ord, target.rel];
  }

  private async insert(target: TargetTable, tuple: TupleData, ord: number) {
    // An insert may re-use a key a pending update names (after a delete): order within the table holds.
    if (this.pendingUpdates.has(target)) await this.flushUpdates(target);
    if (this.batchable(target, tuple)) {
      const run = this.pendingInserts;
      // A keyless table's rows are matched back by content, where duplicates are interchangeable.
      const key = target.keyIndexes.length ? JSON.stringify(target.keyIndexes.map((i) => tuple[i])) : "";
      if (run && (run.target !== target || (key !== "" && run.keys.has(key)))) await this.flushInserts();
      let current = this.pendingInserts;
      if (!current) {
        current = this.newRun(target);
        this.pendingInserts = current;
      }
      this.addToRun(current, key, tuple, ord);
      // Bounded in rows and bytes: memory stays flat whatever the rows' size.
      if (current.seqs.length >= INSERT_RUN_MAX || current.bytes >= QUEUE_MAX_BYTES)
        await this.flushInserts();
      return;
    }
    await this.flushInserts();
    const present = tuple.flatMap((v, i) => (v === UNCHANGED_TOAST ? [] : [i]));
    const key = `I:${present.join(",")}`;
    let sql = target.sqlCache.get(key);
    if (!sql) {
      const cols = present.map((i) => target.columns[i].quoted).join(", ");
      const values = present.map((_, n) => `$${n + 1}`).join(", ");
      const insert = `INSERT INTO ${target.qualified} (${cols}) VALUES (${values})`;
      const p = present.length;
      sql = this.options.history
        ? `WITH strata_n AS (${insert} RETURNING *) INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, new_row) SELECT $${p + 1}::bigint, $${p + 2}::int, $${p + 3}::text, 'I', ${target.keyJson("strata_n")}, to_jsonb(strata_n.*) FROM strata_n`
        : insert;
      target.sqlCache.set(key, sql);
    }
    const params: unknown[] = present.map((i) => tuple[i]);
    if (this.options.history) params.push(...this.historyParams(ord, target));
    await this.enqueue(this.exec(sql, params), undefined, target.rel, tupleBytes(tuple));
  }

  private newRun(target: TargetTable): PendingRun {
    return {
      target,
      keys: new Map(),
      groups: [],
      columns: target.columns.map(() => []),
      seqs: [],
      ords: [],
      bytes: 0,
      firstLsn: this.tx!.meta.commitLsn,
    };
  }

  /** A row of the open commit joins a run (its values are text: see batchable/updateBatchable). */
  private addToRun(run: PendingRun, key: string, tuple: TupleData, ord: number): void {
    let group = run.keys.get(key);
    if (group === undefined) {
      group = run.keys.size;
      run.keys.set(key, group);
    }
    run.groups.push(group);
    for (let i = 0; i < tuple.length; i++) run.columns[i].push(tuple[i] as string | null);
    run.seqs.push(String(this.seq + 1n));
    run.ords.push(ord);
    run.bytes += tupleBytes(tuple);
  }

  /**
   * Whether an insert can join a run of inserts applied as one statement: key columns (if any)
   * that compare with `=`, and text values for every column (no binary values, no
   * unchanged-TOAST markers).
   */
  private batchable(target: TargetTable, tuple: TupleData): boolean {
    // A keyless run is matched back with jsonb_build_object of every column: at most 100 arguments.
    if (target.keyIndexes.length === 0 && target.columns.length > 50) return false;
    for (const i of target.keyIndexes) if (target.columns[i].compareAsText) return false;
    for (const v of tuple) if (v !== null && typeof v !== "string") return false;
    return true;
  }

  /**
   * Send the pending run of inserts: one INSERT ... SELECT FROM unnest(...) for the rows, and
   * their history rows from RETURNING, matched back to each row's commit and ordinal by key. The
   * statement is not waited for: Strata decodes the next rows while the store inserts these (the
   * client runs statements in order). settle() waits, and reports a failure as this run's.
   */
  private async flushInserts(): Promise<void> {
    const run = this.pendingInserts;
    if (!run) return;
    this.pendingInserts = undefined;
    // Not waited for, like every statement (enqueue bounds what is queued). As a replica, the
    // other tables' pending runs of updates stay pending (changes to different tables commute
    // within a batch when no foreign key is checked): sending them now would cut them short
    // wherever inserts into two tables interleave.
    if (!this.options.replicaRole)
      for (const other of [...this.pendingUpdates.keys()]) await this.flushUpdates(other);
    const { target } = run;
    const n = target.columns.length;
    const fromInput = this.options.history && this.collapsible(target);
    let sql = target.sqlCache.get(fromInput ? "I*in" : "I*");
    if (!sql && fromInput) {
      // The stored rows are exactly the typed input values (collapsible()): history is built from
      // them, without RETURNING the rows and pairing each with its input row again (by key, or
      // for a keyless table by content, two sorts on jsonb: most of the statement's time).
      const { aliases, arrays } = runSql(target, 3);
      const typed = target.columns.map((c, i) => `${aliases[i]}::${c.type} AS ${aliases[i]}`).join(", ");
      const value = (i: number) => `strata_t.${aliases[i]}`;
      const key = target.keyIndexes.length ? rowImageSql(target, value, target.keyIndexes) : "NULL::jsonb";
      sql = `WITH strata_t AS (SELECT strata_seq, strata_ord, ${typed}
                               FROM unnest($1::bigint[], $2::int[], ${arrays}) AS u(strata_seq, strata_ord, ${aliases.join(", ")})
                              WHERE ${sameShapeSql(target)}),
                  strata_n AS (INSERT INTO ${target.qualified} (${target.columns.map((c) => c.quoted).join(", ")})
                               SELECT ${aliases.join(", ")} FROM strata_t ORDER BY strata_seq, strata_ord)
             INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, new_row)
             SELECT strata_seq, strata_ord, $${n + 3}::text, 'I', ${key}, ${rowImageSql(target, value)} FROM strata_t`;
      target.sqlCache.set("I*in", sql);
    }
    if (!sql) {
      const { aliases, arrays } = runSql(target, 3);
      const typed = target.columns.map((c, i) => `${aliases[i]}::${c.type}`).join(", ");
      const input = `strata_in AS (SELECT * FROM unnest($1::bigint[], $2::int[], ${arrays}) AS u(strata_seq, strata_ord, ${aliases.join(", ")}))`;
      const insert = `INSERT INTO ${target.qualified} (${target.columns.map((c) => c.quoted).join(", ")}) SELECT ${typed} FROM strata_in ORDER BY strata_seq, strata_ord`;
      let history: string;
      if (target.keyIndexes.length > 0) {
        const join = target.keyIndexes
          .map(
            (i) =>
              `strata_n.${target.columns[i].quoted} = strata_in.${aliases[i]}::${target.columns[i].type}`,
          )
          .join(" AND ");
        history = `SELECT strata_in.strata_seq, strata_in.strata_ord, $${n + 3}::text, 'I', ${target.keyJson("strata_n")}, to_jsonb(strata_n.*)
             FROM strata_n JOIN strata_in ON ${join}`;
      } else {
        // No key: each returned row is paired with an input row of the same content (the k-th
        // duplicate with the k-th: identical rows are interchangeable).
        const content = (alias: string, typed: boolean) =>
          `jsonb_build_object(${target.columns
            .map(
              (c, i) =>
                `'${c.name.replace(/'/g, "''")}', ${typed ? `${alias}.${aliases[i]}::${c.type}` : `${alias}.${c.quoted}`}`,
            )
            .join(", ")})`;
        history = `SELECT i.strata_seq, i.strata_ord, $${n + 3}::text, 'I', NULL::jsonb, o.strata_row
             FROM (SELECT to_jsonb(strata_n.*) AS strata_row, ${content("strata_n", false)} AS strata_content,
                          row_number() OVER (PARTITION BY ${content("strata_n", false)}) AS strata_k FROM strata_n) o
             JOIN (SELECT strata_in.strata_seq, strata_in.strata_ord, ${content("strata_in", true)} AS strata_content,
                          row_number() OVER (PARTITION BY ${content("strata_in", true)}) AS strata_k FROM strata_in) i
               ON o.strata_content = i.strata_content AND o.strata_k = i.strata_k`;
      }
      sql = this.options.history
        ? `WITH ${input}, strata_n AS (${insert} RETURNING *)
           INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, new_row) ${history}`
        : `WITH ${input} ${insert}`;
      target.sqlCache.set("I*", sql);
    }
    const params: unknown[] = [run.seqs, run.ords, ...run.columns];
    if (this.options.history) params.push(target.rel);
    await this.enqueue(this.exec(sql, params), undefined, target.rel, run.bytes, run.firstLsn);
  }

  /**
   * Apply pending inserts and wait for them: before any statement whose result matters, so that
   * a failed run is reported as itself, not as the "transaction is aborted" of what came after.
   */
  private async settle(): Promise<void> {
    if (this.pendingInserts) await this.flushInserts();
    for (const target of [...this.pendingUpdates.keys()]) await this.flushUpdates(target);
    await this.drain();
  }

  /**
   * Whether a run of updates may collapse a key updated again (flushCollapsedUpdates): applying
   * as a replica, to a table whose columns are all replicated and whose row triggers do not fire.
   */
  private collapsible(target: TargetTable): boolean {
    return Boolean(this.options.replicaRole) && target.onlyReplicatedColumns && !target.replicaRowTriggers;
  }

  /** Wait for the statements sent so far (not the pending runs); report a failure among them. */
  private async drain(): Promise<void> {
    // The client runs statements in order, so the last one done means all are.
    await this.inflight;
    this.inflight = undefined;
    this.queued = 0;
    this.queuedBytes = 0;
    if (this.inflightError) throw this.inflightError;
  }

  /**
   * Whether an update can join its table's run of updates: a keyed table (keys that compare with
   * `=`), a full new row in text (no unchanged-TOAST markers, no binary values), and a key that
   * the update does not change (so each row is found by the key the new row carries).
   */
  private updateBatchable(target: TargetTable, msg: UpdateMessage): boolean {
    if (target.keyIndexes.length === 0) return false;
    for (const i of target.keyIndexes) if (target.columns[i].compareAsText) return false;
    for (const v of msg.newTuple) if (v !== null && typeof v !== "string") return false;
    if (msg.oldTuple) {
      if (msg.oldKind !== "K") return false;
      for (const i of target.keyIndexes) if (msg.oldTuple[i] !== msg.newTuple[i]) return false;
    }
    return true;
  }

  /**
   * Send a table's pending run of updates as one statement: the rows are found by key, their
   * images before (for history) read in the same statement, and each must change exactly one row.
   * Sent without waiting, like single statements (see enqueue).
   */
  private async flushUpdates(target: TargetTable): Promise<void> {
    const run = this.pendingUpdates.get(target);
    if (!run) return;
    this.pendingUpdates.delete(target);
    if (run.keys.size < run.seqs.length) return this.flushCollapsedUpdates(target, run);
    let sql = target.sqlCache.get("U*");
    if (!sql) {
      const { aliases, arrays, match, assignments } = runSql(target, 3);
      const input = `strata_in AS (SELECT * FROM unnest($1::bigint[], $2::int[], ${arrays}) AS u(strata_seq, strata_ord, ${aliases.join(", ")}))`;
      const n = target.columns.length;
      sql = this.options.history
        ? `WITH ${input},
                strata_o AS (SELECT strata_s.tableoid AS strata_oid, strata_s.ctid AS strata_ctid, to_jsonb(strata_s.*) AS strata_old, strata_in.*
                               FROM ${target.qualified} strata_s JOIN strata_in ON ${match}),
                strata_u AS (UPDATE ${target.qualified} strata_t SET ${assignments} FROM strata_o WHERE ${LOCATED}
                      RETURNING strata_o.strata_seq, strata_o.strata_ord, strata_o.strata_old, to_jsonb(strata_t.*) AS strata_new, ${target.keyJson("strata_t")} AS strata_key)
           INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_row, new_row)
           SELECT strata_u.strata_seq, strata_u.strata_ord, $${n + 3}::text, 'U', strata_u.strata_key, strata_u.strata_old, strata_u.strata_new FROM strata_u`
        : `WITH ${input},
                strata_o AS (SELECT strata_s.tableoid AS strata_oid, strata_s.ctid AS strata_ctid, strata_in.*
                               FROM ${target.qualified} strata_s JOIN strata_in ON ${match})
           UPDATE ${target.qualified} strata_t SET ${assignments} FROM strata_o WHERE ${LOCATED}`;
      target.sqlCache.set("U*", sql);
    }
    const params: unknown[] = [run.seqs, run.ords, ...run.columns];
    if (this.options.history) params.push(target.rel);
    await this.sendUpdateRun(target, run, sql, params, run.seqs.length, "rows to update are missing");
  }

  /**
   * A run of updates in which some rows are updated more than once (pgbench's branches, say):
   * each row is written once, with its last values, and history still gets every version. A
   * version's image after is the stored row with that update's values; its image before is the
   * previous version's after, or for the first, the row as it was. Only where those values are
   * the whole row as stored (collapsible).
   */
  private async flushCollapsedUpdates(target: TargetTable, run: PendingRun): Promise<void> {
    const history = this.options.history;
    let sql = target.sqlCache.get("U+");
    if (!sql) {
      const { aliases, arrays, match, assignments } = runSql(target, 5);
      // The run relies on the table's shape (collapsible()): the statement checks it.
      const input = `strata_in AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bool[], ${arrays})
                       AS u(strata_seq, strata_ord, strata_group, strata_last, ${aliases.join(", ")}) WHERE ${sameShapeSql(target)})`;
      const image = rowImageSql(target, (i) => `strata_i.${aliases[i]}::${target.columns[i].type}`);
      const n = target.columns.length;
      sql = history
        ? `WITH ${input},
                strata_o AS (SELECT strata_s.tableoid AS strata_oid, strata_s.ctid AS strata_ctid, to_jsonb(strata_s.*) AS strata_old, strata_in.*
                               FROM ${target.qualified} strata_s JOIN strata_in ON ${match} WHERE strata_in.strata_last),
                strata_u AS (UPDATE ${target.qualified} strata_t SET ${assignments} FROM strata_o WHERE ${LOCATED}
                      RETURNING strata_o.strata_group, strata_o.strata_old, to_jsonb(strata_t.*) AS strata_new, ${target.keyJson("strata_t")} AS strata_key),
                strata_v AS (SELECT strata_i.strata_seq, strata_i.strata_ord, strata_i.strata_group, strata_u.strata_key, strata_u.strata_old,
                                    CASE WHEN strata_i.strata_last THEN strata_u.strata_new ELSE strata_u.strata_new || ${image} END AS strata_img
                               FROM strata_in strata_i JOIN strata_u ON strata_u.strata_group = strata_i.strata_group)
           INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_row, new_row)
           SELECT strata_seq, strata_ord, $${n + 5}::text, 'U', strata_key,
                  coalesce(lag(strata_img) OVER (PARTITION BY strata_group ORDER BY strata_seq, strata_ord), strata_old), strata_img
             FROM strata_v`
        : `WITH ${input},
                strata_o AS (SELECT strata_s.tableoid AS strata_oid, strata_s.ctid AS strata_ctid, strata_in.*
                               FROM ${target.qualified} strata_s JOIN strata_in ON ${match} WHERE strata_in.strata_last)
           UPDATE ${target.qualified} strata_t SET ${assignments} FROM strata_o WHERE ${LOCATED}`;
      target.sqlCache.set("U+", sql);
    }
    const last = new Array<boolean>(run.groups.length).fill(false);
    const seen = new Set<number>();
    for (let i = run.groups.length - 1; i >= 0; i--) {
      if (seen.has(run.groups[i])) continue;
      seen.add(run.groups[i]);
      last[i] = true;
    }
    const params: unknown[] = [run.seqs, run.ords, run.groups, last, ...run.columns];
    if (history) params.push(target.rel);
    // With history, one history row per update; without, one row updated per key.
    await this.sendUpdateRun(
      target,
      run,
      sql,
      params,
      history ? run.seqs.length : run.keys.size,
      history ? "updates found no row" : "rows to update are missing",
    );
  }

  /** A run of updates' statement, sent without waiting: it must count `expected` rows. */
  private async sendUpdateRun(
    target: TargetTable,
    run: PendingRun,
    sql: string,
    params: unknown[],
    expected: number,
    shortfall: string,
  ): Promise<void> {
    await this.enqueue(
      this.exec(sql, params),
      (result) => {
        if (result.rowCount !== expected)
          throw withLsn(
            new ApplyError(
              `${expected - (result.rowCount ?? 0)} of ${expected} ${shortfall} on the replica`,
              `the replica table ${target.rel} diverged from the primary (rows were changed or removed on the replica); restore them or re-seed the table, then replication resumes`,
              { table: target.rel },
            ),
            run.firstLsn,
          );
      },
      target.rel,
      run.bytes,
      run.firstLsn,
    );
  }

  /** WHERE clause locating one row (alias s), and its parameters. */
  private match(
    target: TargetTable,
    identity: TupleData,
    useAllColumns: boolean,
    firstParam: number,
  ): { where: string; params: unknown[]; key: string } {
    const parts: string[] = [];
    const params: unknown[] = [];
    const used: number[] = [];
    const indexes = useAllColumns ? target.columns.map((_, i) => i) : target.keyIndexes;
    for (const i of indexes) {
      const value = identity[i];
      if (value === UNCHANGED_TOAST) continue;
      const col = target.columns[i];
      const n = firstParam + params.length;
      used.push(i);
      if (useAllColumns) {
        parts.push(
          col.compareAsText
            ? `strata_s.${col.quoted}::text IS NOT DISTINCT FROM $${n}::text`
            : // Equality can ignore differences (numeric 1.0 = 1.00, float 0 = -0, citext): the text
              // form in the replica's type must match too, so the very row the primary changed is hit.
              `strata_s.${col.quoted} IS NOT DISTINCT FROM $${n} AND strata_s.${col.quoted}::text IS NOT DISTINCT FROM $${n}::${col.type}::text`,
        );
      } else {
        parts.push(
          col.compareAsText ? `strata_s.${col.quoted}::text = $${n}::text` : `strata_s.${col.quoted} = $${n}`,
        );
      }
      params.push(value);
    }
    if (parts.length === 0) {
      throw new ApplyError(
        `table ${target.rel} has no replica identity to locate rows by`,
        `give it a primary key or set REPLICA IDENTITY FULL on the primary`,
        { table: target.rel },
      );
    }
    return { where: parts.join(" AND "), params, key: used.join(",") };
  }

  private identityOf(
    target: TargetTable,
    old: TupleData | undefined,
    oldKind: "K" | "O" | undefined,
    fallback: TupleData,
  ) {
    if (old && oldKind === "O") return { tuple: old, all: true };
    if (old) return { tuple: old, all: target.keyIndexes.length === 0 };
    return { tuple: fallback, all: target.keyIndexes.length === 0 };
  }

  private async update(target: TargetTable, msg: UpdateMessage, ord: number) {
    // A pending run of inserts into another table does not interact with this row: it stays.
    if (this.pendingInserts?.target === target) await this.flushInserts();
    if (this.updateBatchable(target, msg)) {
      const key = JSON.stringify(target.keyIndexes.map((i) => msg.newTuple[i]));
      let run = this.pendingUpdates.get(target);
      // A key updated again joins the run too (flushUpdates collapses it), where every version
      // of the row can be written to history from the run's own values.
      if (run?.keys.has(key) && !this.collapsible(target)) {
        await this.flushUpdates(target);
        run = undefined;
      }
      if (!run) {
        run = this.newRun(target);
        this.pendingUpdates.set(target, run);
      }
      this.addToRun(run, key, msg.newTuple, ord);
      if (run.seqs.length >= UPDATE_RUN_MAX || run.bytes >= QUEUE_MAX_BYTES) await this.flushUpdates(target);
      return;
    }
    if (this.pendingUpdates.has(target)) await this.flushUpdates(target);
    const set = msg.newTuple.flatMap((v, i) => (v === UNCHANGED_TOAST ? [] : [i]));
    const id = this.identityOf(target, msg.oldTuple, msg.oldKind, msg.newTuple);
    const m = this.match(target, id.tuple, id.all, set.length + 1);
    const cacheKey = `U:${set.join(",")}:${id.all ? "A" : "K"}:${m.key}`;
    let sql = target.sqlCache.get(cacheKey);
    const p = set.length + m.params.length;
    if (!sql) {
      const assignments = set.map((i, n) => `${target.columns[i].quoted} = $${n + 1}`).join(", ");
      sql = this.options.history
        ? `WITH ${locateOne(target, m.where, true)},
                strata_u AS (UPDATE ${target.qualified} strata_t SET ${assignments} FROM strata_o WHERE ${LOCATED}
                      RETURNING strata_o.strata_old, strata_o.strata_old_key, to_jsonb(strata_t.*) AS strata_new, ${target.keyJson("strata_t")} AS strata_key)
           INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_key, old_row, new_row)
           SELECT $${p + 1}::bigint, $${p + 2}::int, $${p + 3}::text, 'U', strata_u.strata_key,
                  CASE WHEN strata_u.strata_old_key IS DISTINCT FROM strata_u.strata_key THEN strata_u.strata_old_key END,
                  strata_u.strata_old, strata_u.strata_new FROM strata_u`
        : `WITH ${locateOne(target, m.where, false)} UPDATE ${target.qualified} strata_t SET ${assignments} FROM strata_o WHERE ${LOCATED}`;
      target.sqlCache.set(cacheKey, sql);
    }
    const params: unknown[] = [...set.map((i) => msg.newTuple[i]), ...m.params];
    if (this.options.history) params.push(...this.historyParams(ord, target));
    await this.enqueue(
      this.exec(sql, params),
      (result) => {
        if (result.rowCount !== 1) this.missingRow(target, "update", id.tuple);
      },
      target.rel,
      tupleBytes(msg.newTuple) + tupleBytes(id.tuple),
    );
  }

  private async delete(target: TargetTable, msg: DeleteMessage, ord: number) {
    if (this.pendingInserts?.target === target) await this.flushInserts();
    if (this.pendingUpdates.has(target)) await this.flushUpdates(target);
    const id = this.identityOf(target, msg.oldTuple, msg.oldKind, msg.oldTuple);
    const m = this.match(target, id.tuple, id.all, 1);
    const cacheKey = `D:${id.all ? "A" : "K"}:${m.key}`;
    let sql = target.sqlCache.get(cacheKey);
    const p = m.params.length;
    if (!sql) {
      sql = this.options.history
        ? `WITH ${locateOne(target, m.where, false)},
                strata_d AS (DELETE FROM ${target.qualified} strata_t USING strata_o WHERE ${LOCATED} RETURNING to_jsonb(strata_t.*) AS strata_old, ${target.keyJson("strata_t")} AS strata_key)
           INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_row)
           SELECT $${p + 1}::bigint, $${p + 2}::int, $${p + 3}::text, 'D', strata_d.strata_key, strata_d.strata_old FROM strata_d`
        : `WITH ${locateOne(target, m.where, false)} DELETE FROM ${target.qualified} strata_t USING strata_o WHERE ${LOCATED}`;
      target.sqlCache.set(cacheKey, sql);
    }
    const params = [...m.params];
    if (this.options.history) params.push(...this.historyParams(ord, target));
    await this.enqueue(
      this.exec(sql, params),
      (result) => {
        if (result.rowCount !== 1) this.missingRow(target, "delete", id.tuple);
      },
      target.rel,
      tupleBytes(id.tuple),
    );
  }

  /**
   * A statement sent without waiting for it: Strata goes on decoding while the store works
   * through the queue in order. Its outcome (and `check` of its result, e.g. one row changed) is
   * collected by settle(); the first failure is the one reported. The queue is bounded in
   * statements and bytes, so memory stays bounded however large the batch.
   */
  private async enqueue<T>(
    query: Promise<T>,
    check: ((result: T) => void) | undefined,
    /** The table the statement writes, to explain its failure; none: the failure is reported as it is. */
    rel: string | undefined,
    bytes: number,
    lsn = this.tx?.meta.commitLsn,
  ): Promise<void> {
    this.inflight = query.then(
      (result) => {
        try {
          check?.(result);
        } catch (err) {
          this.inflightError ??= lsn === undefined ? (err as Error) : withLsn(err as Error, lsn);
        }
      },
      (err) => {
        const explained = rel === undefined ? (err as Error) : explainStoreError(err, rel);
        this.inflightError ??= lsn === undefined ? explained : withLsn(explained, lsn);
      },
    );
    this.queued++;
    this.queuedBytes += bytes;
    if (this.queued >= QUEUE_MAX_STATEMENTS || this.queuedBytes >= QUEUE_MAX_BYTES) await this.settle();
  }

  private missingRow(target: TargetTable, what: string, identity: TupleData): never {
    const shown = (target.keyIndexes.length ? target.keyIndexes : target.columns.map((_, i) => i))
      .map(
        (i) =>
          `${target.columns[i].name}=${identity[i] === null ? "NULL" : typeof identity[i] === "string" ? identity[i] : "<value>"}`,
      )
      .join(", ");
    throw new ApplyError(
      `the row to ${what} (${shown}) is missing on the replica`,
      `the replica table ${target.rel} diverged from the primary (a row was changed on the replica); restore the row or re-seed the table, then replication resumes`,
      { table: target.rel },
    );
  }

  private async applyTruncate(msg: TruncateMessage) {
    await this.settle();
    const tx = this.tx!;
    const targets: TargetTable[] = [];
    for (const oid of msg.relationOids) {
      const target = await this.target(oid);
      if (!this.inCopy(oid)) targets.push(target);
    }
    if (targets.length === 0) return;
    tx.hasher?.addTruncate(
      targets.map((t) => t.rel),
      msg.cascade,
      msg.restartIdentity,
    );
    try {
      if (this.options.history) {
        for (const target of targets) {
          // The removed rows become history, so diffs across a TRUNCATE stay exact.
          await this.client.query(
            `INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_row)
             SELECT $1::bigint, $2::int, $3::text, 'T', ${target.keyJson("strata_t")}, to_jsonb(strata_t.*) FROM ${target.qualified} strata_t`,
            this.historyParams(tx.ord, target),
          );
        }
      }
      tx.ord++;
      tx.changes++;
      this.batchChanges++;
      await this.client.query(
        `TRUNCATE ${targets.map((t) => (t.partitioned ? t.qualified : `ONLY ${t.qualified}`)).join(", ")}${msg.restartIdentity ? " RESTART IDENTITY" : ""}`,
      );
    } catch (err) {
      throw withLsn(explainStoreError(err, targets.map((t) => t.rel).join(", ")), tx.meta.commitLsn);
    }
  }

  /** The upstream transaction is complete: record its commit (still inside the store transaction). */
  async commitTransaction(endLsn: bigint): Promise<void> {
    const tx = this.tx;
    if (!tx)
      throw new ApplyError(
        "a commit arrived outside a transaction",
        "this is a protocol error; restart Strata",
      );
    if (!tx.started || tx.changes === 0) {
      // No row changes (or only ones an earlier copy holds, or held ones): no commit. Its end
      // still counts as reached (nothing to lose there).
      this.tx = undefined;
      if (tx.replay) return;
      if (this.inStoreTx) this.pendingEnd = endLsn;
      else if (endLsn > this.position) this.position = endLsn;
      return;
    }
    if (tx.hasher) {
      const header: CommitHeader = {
        parentHash: this.head,
        committer: this.options.committer,
        email: this.options.email,
        date: tx.date,
        message: tx.notes.length ? `${tx.message}: ${tx.notes.join("; ")}` : tx.message,
        // A replayed transaction's commit is not where the primary was at its LSN (the other
        // tables have moved on): it names the transaction, and no LSN resolves to it.
        ...(tx.replay
          ? { upstreamXid: tx.meta.xid || undefined }
          : { upstreamXid: tx.meta.xid, upstreamCommitLsn: tx.meta.commitLsn, upstreamEndLsn: endLsn }),
      };
      const hash = tx.hasher.digestWith(header);
      const seq = this.seq + 1n;
      // Written with the batch's other commit rows, in one statement, when the batch is flushed.
      this.pendingCommits.push({ ...header, seq, hash });
      this.seq = seq;
      this.head = hash;
    }
    if (!tx.replay) this.pendingEnd = endLsn;
    this.batchTransactions++;
    this.tx = undefined;
  }

  /** Make the batch durable: position, then COMMIT. Returns the durable position. */
  async flush(): Promise<bigint> {
    if (!this.inStoreTx) return this.position;
    if (this.tx) throw new Error("flush() inside an upstream transaction");
    if (this.pendingInserts) await this.flushInserts();
    for (const target of [...this.pendingUpdates.keys()]) await this.flushUpdates(target);
    // The commit rows and the position go behind the batch's statements without waiting for them,
    // and all are waited for once: a batch costs two round trips (this and COMMIT), not four. The
    // COMMIT itself waits, as some results are checked here (one row changed) and a failed check
    // must roll the batch back.
    if (this.pendingCommits.length > 0)
      await this.enqueue(insertCommitRows(this.client, this.pendingCommits), undefined, undefined, 0);
    this.pendingCommits = [];
    if (this.pendingEnd !== undefined) {
      await this.enqueue(
        this.client.query({
          name: "strata_source_position",
          text: `INSERT INTO strata.source_position (slot_name, end_lsn) VALUES ($1, $2)
                 ON CONFLICT (slot_name) DO UPDATE SET end_lsn = excluded.end_lsn, updated_at = clock_timestamp()`,
          values: [this.options.slot, formatLsn(this.pendingEnd)],
        }),
        undefined,
        undefined,
        0,
      );
    }
    await this.drain();
    // One round trip: the commit, then where the store's WAL ends after it and how far it is flushed.
    const results = (await this.client.query(
      "COMMIT; SELECT pg_current_wal_insert_lsn()::text AS wal_end, pg_current_wal_flush_lsn()::text AS flushed",
    )) as unknown as pg.QueryResult<{ wal_end: string; flushed: string }>[];
    const wal = results[1]?.rows[0];
    if (wal) {
      this.lastCommitWal = parseLsn(wal.wal_end);
      this.lastFlushedWal = parseLsn(wal.flushed);
    }
    this.inStoreTx = false;
    if (this.pendingEnd !== undefined) this.position = this.pendingEnd;
    this.pendingEnd = undefined;
    this.durableSeq = this.seq;
    this.durableHash = this.head;
    return this.position;
  }

  /** Roll back whatever is not durable. */
  async abort(): Promise<void> {
    this.tx = undefined;
    this.pendingInserts = undefined;
    this.pendingUpdates.clear();
    this.pendingCommits = [];
    await this.inflight;
    this.inflight = undefined;
    this.inflightError = undefined;
    this.queued = 0;
    this.queuedBytes = 0;
    this.pendingEnd = undefined;
    this.seq = this.durableSeq;
    this.head = this.durableHash;
    this.targets.clear();
    // What was learnt of upstream tables in the rolled-back transaction is gone with it.
    this.known.clear();
    this.syncedBefore.clear();
    if (this.inStoreTx) {
      this.inStoreTx = false;
      await this.client.query("ROLLBACK").catch(() => {});
    }
  }
}

/**
 * Name the upstream relation an error is about (so its table can be held), only if the error is
 * about that table: a failure of an earlier statement, reported late, names its own table.
 */
function withRelid<E>(err: E, rel: string | undefined, relid: number): E {
  if (!(err instanceof ApplyError) || err.context.relid !== undefined || err.context.table !== rel)
    return err;
  return err.withContext({ relid }) as E;
}

/** Add the upstream LSN to an error, unless it names one already (a deferred failure's own). */
function withLsn(err: Error, lsn: bigint): Error {
  if (!(err instanceof ApplyError) || err.context.lsn) return err;
  return err.withContext({ lsn: formatLsn(lsn) });
}
