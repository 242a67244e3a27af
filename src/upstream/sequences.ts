// Sequence values from the primary to the replica database.
//
// Logical replication does not carry sequences: a row inserted with id 1042 arrives, but the
// sequence that produced it stays where it was on the replica. A replica promoted to primary would
// then hand out ids the old primary already used. So Strata copies sequences itself: at the end of
// the initial snapshot, every `sequence_sync_interval_ms` while serving, and on demand with
// `strata sync-sequences`.
//
//   primary pg_sequences ──▶ definitions (type, increment, min, max, start, cache, cycle)
//   primary seq relations ──▶ (last_value, is_called)      read in batches of UNION ALL
//            │
//            ▼  per sequence, on the replica database:
//   missing ──▶ CREATE SCHEMA / CREATE SEQUENCE with the primary's definition
//   definition differs ──▶ ALTER SEQUENCE to the primary's definition
//   primary's next value beyond the replica's ──▶ setval(last_value, is_called)
//   replica's next value beyond the primary's ──▶ kept (never move backwards: no id is reused)
//
// "Next value" is what nextval would return: last_value + increment when is_called, else
// last_value; "beyond" follows the sign of the increment. A CYCLE sequence wraps around by
// design, so there is no "backwards" to protect against: it simply follows the primary.
//
// Only values and definitions are copied, not owners, grants or OWNED BY. Sequences that exist
// only on the replica are left alone. A failure on one sequence is reported and does not stop
// the others; the next run repairs what the last one could not do.
import pg from "pg";
import type { PostgresReplicationConfig } from "../config/schema.ts";
import { connect } from "../db.ts";
import type { Logger } from "../log.ts";
import { upstreamConnectionConfig } from "./setup.ts";

/** Schemas whose sequences are never copied: the catalogs and Strata's own. */
const SKIPPED_SCHEMAS = ["pg_catalog", "information_schema", "strata", "dolt"];

const VALUE_BATCH = 200;

interface SequenceDefinition {
  schema: string;
  name: string;
  type: string;
  start: bigint;
  min: bigint;
  max: bigint;
  increment: bigint;
  cache: bigint;
  cycle: boolean;
}

interface SequenceValue {
  last: bigint;
  isCalled: boolean;
}

export interface SequenceSyncSummary {
  /** Readable sequences on the primary. */
  total: number;
  created: number;
  /** Existing replica sequences whose definition was changed to the primary's. */
  altered: number;
  /** Replica sequences moved forward to the primary's value. */
  advanced: number;
  unchanged: number;
  /** Replica sequences already beyond the primary's value (kept: never moved backwards). */
  ahead: number;
  /** Sequences the upstream user may not read (qualified names). */
  unreadable: string[];
  /** Sequences that could not be copied, with the reason. */
  failed: { sequence: string; error: string }[];
}

export function formatSequenceSummary(s: SequenceSyncSummary): string {
  const parts = [
    `${s.total} sequence${s.total === 1 ? "" : "s"} on the primary`,
    `${s.created} created`,
    `${s.advanced} advanced`,
    `${s.unchanged} unchanged`,
  ];
  if (s.altered) parts.push(`${s.altered} redefined`);
  if (s.ahead) parts.push(`${s.ahead} kept ahead of the primary`);
  if (s.unreadable.length) parts.push(`${s.unreadable.length} unreadable`);
  if (s.failed.length) parts.push(`${s.failed.length} failed`);
  return parts.join(", ");
}

const qualify = (schema: string, name: string) =>
  `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(name)}`;

const LIST_SQL = `
  SELECT schemaname AS schema, sequencename AS name, data_type::text AS type,
         start_value::text AS start, min_value::text AS min, max_value::text AS max,
         increment_by::text AS increment, cache_size::text AS cache, cycle,
         has_sequence_privilege(format('%I.%I', schemaname, sequencename), 'SELECT') AS readable
    FROM pg_sequences
   WHERE schemaname <> ALL ($1::text[]) AND schemaname NOT LIKE 'pg\\_%'
   ORDER BY schemaname, sequencename`;

interface ListedSequence extends SequenceDefinition {
  readable: boolean;
}

async function listSequences(client: pg.Client): Promise<ListedSequence[]> {
  const { rows } = await client.query(LIST_SQL, [SKIPPED_SCHEMAS]);
  return rows.map((r) => ({
    schema: r.schema,
    name: r.name,
    type: r.type,
    start: BigInt(r.start),
    min: BigInt(r.min),
    max: BigInt(r.max),
    increment: BigInt(r.increment),
    cache: BigInt(r.cache),
    cycle: r.cycle,
    readable: r.readable,
  }));
}

/**
 * (last_value, is_called) of each sequence, keyed by qualified name. pg_sequences.last_value
 * hides is_called (NULL when false, also after setval(..., false)), so the relations are read.
 * A sequence dropped since it was listed is left out.
 */
async function readValues(
  client: pg.Client,
  sequences: SequenceDefinition[],
): Promise<Map<string, SequenceValue>> {
  const values = new Map<string, SequenceValue>();
  const read = async (batch: SequenceDefinition[]) => {
    const sql = batch
      .map(
        (s, i) => `SELECT ${i} AS i, last_value::text AS last, is_called FROM ${qualify(s.schema, s.name)}`,
      )
      .join(" UNION ALL ");
    const { rows } = await client.query(sql);
    for (const row of rows) {
      const s = batch[row.i];
      values.set(qualify(s.schema, s.name), { last: BigInt(row.last), isCalled: row.is_called });
    }
  };
  for (let i = 0; i < sequences.length; i += VALUE_BATCH) {
    const batch = sequences.slice(i, i + VALUE_BATCH);
    try {
      await read(batch);
    } catch (err) {
      if ((err as { code?: string }).code !== "42P01") throw err;
      // One of them was dropped meanwhile: read the rest one by one.
      for (const s of batch) {
        await read([s]).catch((e) => {
          if ((e as { code?: string }).code !== "42P01") throw e;
        });
      }
    }
  }
  return values;
}

const nextValue = (v: SequenceValue, increment: bigint) => (v.isCalled ? v.last + increment : v.last);

function definitionClause(d: SequenceDefinition): string {
  return (
    `AS ${d.type} INCREMENT BY ${d.increment} MINVALUE ${d.min} MAXVALUE ${d.max} ` +
    `START WITH ${d.start} CACHE ${d.cache} ${d.cycle ? "CYCLE" : "NO CYCLE"}`
  );
}

function sameDefinition(a: SequenceDefinition, b: SequenceDefinition): boolean {
  return (
    a.type === b.type &&
    a.increment === b.increment &&
    a.min === b.min &&
    a.max === b.max &&
    a.start === b.start &&
    a.cache === b.cache &&
    a.cycle === b.cycle
  );
}

/**
 * Copy the primary's sequences to the replica database (see the file header).
 *
 * `primary` is a connection to the upstream database, `replica` a connection to the replica
 * database on the store as a user that may create schemas and sequences. `replica` must not be
 * inside a transaction the caller cares about: a failing statement would abort it. Concurrent
 * runs (the periodic one, the snapshot's, the CLI's) are serialised by an advisory lock on the
 * store. Connection errors are thrown; per-sequence errors are logged and counted in `failed`.
 */
export async function syncSequences(
  primary: pg.Client,
  replica: pg.Client,
  log?: Logger,
): Promise<SequenceSyncSummary> {
  const summary: SequenceSyncSummary = {
    total: 0,
    created: 0,
    altered: 0,
    advanced: 0,
    unchanged: 0,
    ahead: 0,
    unreadable: [],
    failed: [],
  };
  const listed = await listSequences(primary);
  const readable = listed.filter((s) => s.readable);
  summary.unreadable = listed.filter((s) => !s.readable).map((s) => `${s.schema}.${s.name}`);
  if (summary.unreadable.length) {
    log?.warn(
      { sequences: summary.unreadable },
      "the upstream user may not read these sequences, so their values are not copied; fix: GRANT SELECT ON them (or ON ALL SEQUENCES IN SCHEMA ...) to postgres_replication.postgres_user on the primary",
    );
  }
  const primaryValues = await readValues(primary, readable);
  await replica.query("SELECT pg_advisory_lock(hashtext('strata.sequence_sync'))");
  try {
    const existing = new Map((await listSequences(replica)).map((s) => [qualify(s.schema, s.name), s]));
    const replicaValues = await readValues(
      replica,
      readable.filter((s) => existing.has(qualify(s.schema, s.name))),
    );
    for (const def of readable) {
      const key = qualify(def.schema, def.name);
      const source = primaryValues.get(key);
      if (!source) continue; // dropped on the primary while we read
      summary.total++;
      try {
        let current = replicaValues.get(key);
        const found = existing.get(key);
        if (!found || !current) {
          await replica.query(`CREATE SCHEMA IF NOT EXISTS ${pg.escapeIdentifier(def.schema)}`);
          await replica.query(`CREATE SEQUENCE IF NOT EXISTS ${key} ${definitionClause(def)}`);
          summary.created++;
          current = (await readValues(replica, [def])).get(key);
          if (!current) throw new Error("the sequence vanished right after it was created");
        } else if (!sameDefinition(found, def)) {
          await replica.query(`ALTER SEQUENCE ${key} ${definitionClause(def)}`);
          summary.altered++;
        }
        const want = nextValue(source, def.increment);
        const have = nextValue(current, def.increment);
        const beyond = def.cycle ? want !== have : def.increment > 0n ? want > have : want < have;
        if (beyond) {
          await replica.query("SELECT setval($1::regclass, $2::bigint, $3)", [
            key,
            source.last.toString(),
            source.isCalled,
          ]);
          summary.advanced++;
        } else if (want === have) {
          summary.unchanged++;
        } else {
          summary.ahead++;
        }
      } catch (err) {
        const error = (err as Error).message;
        summary.failed.push({ sequence: `${def.schema}.${def.name}`, error });
        log?.warn(
          { sequence: `${def.schema}.${def.name}`, err: error },
          "could not copy a sequence to the replica; the next sync retries it (fix the replica sequence if it was changed by hand)",
        );
      }
    }
  } finally {
    await replica.query("SELECT pg_advisory_unlock(hashtext('strata.sequence_sync'))").catch(() => {});
  }
  return summary;
}

/** Open a connection to the primary and one to the replica database, sync, close both. */
export async function syncSequencesOnce(
  cfg: PostgresReplicationConfig,
  replicaConfig: pg.ClientConfig,
  log?: Logger,
): Promise<SequenceSyncSummary> {
  const primary = await connect({
    ...upstreamConnectionConfig(cfg),
    application_name: "strata sequence sync",
  });
  try {
    const replica = await connect(replicaConfig);
    try {
      return await syncSequences(primary, replica, log);
    } finally {
      await replica.end().catch(() => {});
    }
  } finally {
    await primary.end().catch(() => {});
  }
}

export interface SequenceSyncTimerOptions {
  config: PostgresReplicationConfig;
  replicaConfig: pg.ClientConfig;
  log: Logger;
  intervalMs: number;
  /** Delay of the first run (default: the interval, at most 1 s). */
  firstRunMs?: number;
}

/**
 * The periodic sync of `strata serve`. Runs never overlap (the next is scheduled when one ends)
 * and never throw: an unreachable primary or store is a warning, retried at the next interval.
 */
export class SequenceSyncTimer {
  latest: SequenceSyncSummary | undefined;
  lastError: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private stopped = false;

  constructor(private readonly options: SequenceSyncTimerOptions) {}

  start(): void {
    this.schedule(this.options.firstRunMs ?? Math.min(this.options.intervalMs, 1000));
  }

  private schedule(delay: number) {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.runOnce().finally(() => {
        this.running = undefined;
        this.schedule(this.options.intervalMs);
      });
    }, delay);
  }

  /** One sync now; errors are logged and kept in `lastError`. */
  async runOnce(): Promise<SequenceSyncSummary | undefined> {
    const { log } = this.options;
    try {
      const summary = await syncSequencesOnce(this.options.config, this.options.replicaConfig, log);
      this.latest = summary;
      this.lastError = undefined;
      const changed = summary.created + summary.advanced + summary.altered > 0;
      const fields = { ...summary, unreadable: summary.unreadable.length, failed: summary.failed.length };
      if (changed) log.info(fields, `synced sequences from the primary: ${formatSequenceSummary(summary)}`);
      else log.debug(fields, "sequences already in sync with the primary");
      return summary;
    } catch (err) {
      this.lastError = (err as Error).message;
      log.warn(
        { err: this.lastError, retry_in_ms: this.options.intervalMs },
        "sequence sync failed; retrying at the next interval",
      );
      return undefined;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }
}
