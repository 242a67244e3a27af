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
import { formatLsn, parseLsn } from "../protocol/lsn.ts";
import {
  type DeleteMessage,
  type InsertMessage,
  type RelationMessage,
  type TruncateMessage,
  type TupleData,
  type TypeMessage,
  UNCHANGED_TOAST,
  type UpdateMessage,
} from "../protocol/messages.ts";
import { ApplyError, explainStoreError } from "./errors.ts";
import { createTypeResolver, resolveTarget, type TargetTable, type TypeResolver } from "./target-table.ts";

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

export async function insertCommitRow(client: pg.Client, row: CommitRow): Promise<void> {
  await client.query(
    `INSERT INTO strata.commits (seq, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
    [
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
  );
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
const LOCATED = "strata_t.tableoid = strata_o.strata_oid AND strata_t.ctid = strata_o.strata_ctid";

interface OpenTransaction {
  meta: UpstreamTransaction;
  /** Set once the first change has opened the store transaction. */
  started: boolean;
  hasher: CommitHasher | undefined;
  header: CommitHeader | undefined;
  ord: number;
  changes: number;
  date: string;
  message: string;
}

export class Applier {
  /** End LSN of the last durable upstream transaction (0 when none). */
  position = 0n;
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
  /** Changes applied in the current batch (store transaction). */
  batchChanges = 0;
  batchTransactions = 0;

  constructor(
    private readonly client: pg.Client,
    private readonly options: ApplierOptions,
  ) {
    this.typeResolver = createTypeResolver(client, this.types, options.defineUpstreamType);
  }

  /** Load the durable position and the head of the commit chain. */
  async init(): Promise<void> {
    const pos = await this.client.query<{ end_lsn: string }>(
      "SELECT end_lsn::text FROM strata.source_position WHERE slot_name = $1",
      [this.options.slot],
    );
    if (pos.rows[0]) this.position = parseLsn(pos.rows[0].end_lsn);
    const head = await this.client.query<{ seq: string; hash: string }>(
      "SELECT seq, hash FROM strata.commits ORDER BY seq DESC LIMIT 1",
    );
    if (head.rows[0]) {
      this.durableSeq = BigInt(head.rows[0].seq);
      this.durableHash = head.rows[0].hash;
    }
    this.seq = this.durableSeq;
    this.head = this.durableHash;
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

  relation(msg: RelationMessage): void {
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
  beginTransaction(meta: UpstreamTransaction): void {
    this.tx = {
      meta,
      hasher: undefined,
      header: undefined,
      started: false,
      ord: 0,
      changes: 0,
      date: pgTimeToIso(meta.commitTime),
      message: `replicated transaction ${meta.xid} (commit LSN ${formatLsn(meta.commitLsn)})`,
    };
  }

  private async startTransaction(tx: OpenTransaction): Promise<void> {
    if (tx.started) return;
    if (!this.inStoreTx) {
      await this.client.query("BEGIN");
      this.inStoreTx = true;
      this.batchChanges = 0;
      this.batchTransactions = 0;
    }
    tx.started = true;
    if (this.options.history) {
      tx.header = {
        parentHash: this.head,
        committer: this.options.committer,
        email: this.options.email,
        date: tx.date,
        message: tx.message,
        upstreamXid: tx.meta.xid,
        upstreamCommitLsn: tx.meta.commitLsn,
      };
      tx.hasher = new CommitHasher(tx.header);
    }
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
    const target = await resolveTarget(this.client, relation, this.typeResolver, this.options.history).catch(
      (err) => {
        throw explainStoreError(err, `${relation.namespace}.${relation.name}`);
      },
    );
    this.targets.set(relationOid, target);
    return target;
  }

  async applyChange(msg: RowChange | TruncateMessage): Promise<void> {
    const tx = this.tx;
    if (!tx)
      throw new ApplyError(
        "a row change arrived outside a transaction",
        "this is a protocol error; restart Strata",
      );
    await this.startTransaction(tx);
    if (msg.tag === "Truncate") return this.applyTruncate(msg);
    const target = await this.target(msg.relationOid);
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
      throw withLsn(explainStoreError(err, target.rel), tx.meta.commitLsn);
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
    return this.client.query({ name, text, values });
  }

  private historyParams(ord: number, target: TargetTable): unknown[] {
    return [String(this.seq + 1n), ord, target.rel];
  }

  private async insert(target: TargetTable, tuple: TupleData, ord: number) {
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
    await this.exec(sql, params);
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
    const result = await this.exec(sql, params);
    if (result.rowCount !== 1) this.missingRow(target, "update", id.tuple);
  }

  private async delete(target: TargetTable, msg: DeleteMessage, ord: number) {
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
    const result = await this.exec(sql, params);
    if (result.rowCount !== 1) this.missingRow(target, "delete", id.tuple);
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
    const tx = this.tx!;
    const targets: TargetTable[] = [];
    for (const oid of msg.relationOids) targets.push(await this.target(oid));
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
    if (!tx.started) {
      // No row changes: no commit. Its end still counts as reached (nothing to lose there).
      this.tx = undefined;
      if (this.inStoreTx) this.pendingEnd = endLsn;
      else if (endLsn > this.position) this.position = endLsn;
      return;
    }
    if (tx.hasher && tx.header) {
      const hash = tx.hasher.digest();
      const seq = this.seq + 1n;
      await insertCommitRow(this.client, { ...tx.header, seq, hash, upstreamEndLsn: endLsn });
      this.seq = seq;
      this.head = hash;
    }
    this.pendingEnd = endLsn;
    this.batchTransactions++;
    this.tx = undefined;
  }

  /** Make the batch durable: position, then COMMIT. Returns the durable position. */
  async flush(): Promise<bigint> {
    if (!this.inStoreTx) return this.position;
    if (this.tx) throw new Error("flush() inside an upstream transaction");
    if (this.pendingEnd !== undefined) {
      await this.client.query(
        `INSERT INTO strata.source_position (slot_name, end_lsn) VALUES ($1, $2)
         ON CONFLICT (slot_name) DO UPDATE SET end_lsn = excluded.end_lsn, updated_at = clock_timestamp()`,
        [this.options.slot, formatLsn(this.pendingEnd)],
      );
    }
    await this.client.query("COMMIT");
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
    this.pendingEnd = undefined;
    this.seq = this.durableSeq;
    this.head = this.durableHash;
    this.targets.clear();
    if (this.inStoreTx) {
      this.inStoreTx = false;
      await this.client.query("ROLLBACK").catch(() => {});
    }
  }
}

function withLsn(err: Error, lsn: bigint): Error {
  return err instanceof ApplyError ? err.withContext({ lsn: formatLsn(lsn) }) : err;
}
