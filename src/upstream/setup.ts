// Preparing the upstream primary for Strata: server checks, the publication, the slot.
import pg from "pg";
import { ApplyError } from "../apply/errors.ts";
import type { PostgresReplicationConfig } from "../config/schema.ts";
import { connect } from "../db.ts";
import type { Logger } from "../log.ts";
import { parseLsn } from "../protocol/lsn.ts";
import type { RelationMessage } from "../protocol/messages.ts";
import { ddlTriggerState } from "./ddl-trigger.ts";

/**
 * Settings that fix the text form of values, on the walsender and on the store session alike, so
 * that a value means the same on both sides and hashes the same whatever the servers' defaults.
 */
export const SESSION_OPTIONS =
  "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c bytea_output=hex -c TimeZone=UTC -c lc_monetary=C";

export function upstreamConnectionConfig(cfg: PostgresReplicationConfig): pg.ClientConfig {
  return {
    host: cfg.postgres_server_address,
    port: cfg.postgres_port,
    user: cfg.postgres_user,
    password: cfg.postgres_password,
    database: cfg.postgres_database,
    application_name: "strata",
    connectionTimeoutMillis: 10_000,
    // Text values in a fixed, unambiguous form whatever the primary's defaults.
    options: SESSION_OPTIONS,
    // A silent network partition is noticed by TCP keepalive, not only by the kernel's retries.
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
  };
}

export interface UpstreamInfo {
  serverVersion: number;
  protocolVersion: number;
  slotExists: boolean;
  /** The primary's wal_sender_timeout (0: disabled); it sends keepalives at half of it. */
  walSenderTimeoutMs: number;
  /** The slot's confirmed_flush_lsn, when it exists. */
  slotConfirmedFlush?: bigint;
  /**
   * The publication is FOR ALL TABLES: a table is published from its creation, so the stream
   * holds all of its rows. Otherwise a table first seen mid-stream was added to the publication
   * with rows the stream never carried, and is copied.
   */
  publicationAllTables: boolean;
}

/** pgoutput protocol version for a server: 4 on 16+, 3 on 15, 2 on 14 (streaming), else 1. */
export function protocolVersionFor(serverVersion: number): number {
  if (serverVersion >= 160000) return 4;
  if (serverVersion >= 150000) return 3;
  if (serverVersion >= 140000) return 2;
  return 1;
}

export async function prepareUpstream(
  cfg: PostgresReplicationConfig,
  publication: string,
  log: Logger,
): Promise<UpstreamInfo> {
  const client = await connect(upstreamConnectionConfig(cfg));
  try {
    const version = Number((await client.query("SHOW server_version_num")).rows[0].server_version_num);
    const walLevel = (await client.query("SHOW wal_level")).rows[0].wal_level;
    if (walLevel !== "logical") {
      throw new ApplyError(
        `the primary ${cfg.postgres_server_address}:${cfg.postgres_port} has wal_level = ${walLevel}`,
        "set wal_level = logical in the primary's postgresql.conf and restart it",
      );
    }
    const pub = await client.query<{ puballtables: boolean }>(
      "SELECT puballtables FROM pg_publication WHERE pubname = $1",
      [publication],
    );
    let allTables = pub.rows[0]?.puballtables ?? false;
    if (!pub.rowCount) {
      const what = cfg.publication_tables
        ? `FOR TABLE ${cfg.publication_tables.map(qualifiedTableName).join(", ")}`
        : "FOR ALL TABLES";
      try {
        await client.query(`CREATE PUBLICATION ${pg.escapeIdentifier(publication)} ${what}`);
        log.info({ publication }, `created the publication on the primary (${what})`);
        allTables = !cfg.publication_tables;
      } catch (err) {
        throw new ApplyError(
          `publication "${publication}" does not exist on the primary and user ${cfg.postgres_user} cannot create it (${(err as Error).message})`,
          `create it on the primary as the tables' owner or a superuser: CREATE PUBLICATION ${pg.escapeIdentifier(publication)} ${what};`,
        );
      }
    }
    if (version >= 140000 && (await ddlTriggerState(client)) === "outdated")
      log.warn(
        "the DDL event trigger on the primary is an older Strata's: partitions dropped, detached or attached there are not followed, and a rename followed by rows in one transaction stops the stream; run `strata setup-primary` again to install this version's",
      );
    const slot = await client.query<{
      plugin: string;
      database: string;
      slot_type: string;
      confirmed: string | null;
    }>(
      "SELECT plugin, database, slot_type, confirmed_flush_lsn::text AS confirmed FROM pg_replication_slots WHERE slot_name = $1",
      [cfg.slot_name],
    );
    const found = slot.rows[0];
    if (found && (found.slot_type !== "logical" || found.plugin !== "pgoutput")) {
      throw new ApplyError(
        `replication slot "${cfg.slot_name}" on the primary is a ${found.slot_type} slot with plugin ${found.plugin ?? "none"}`,
        `use another slot_name, or drop it on the primary (SELECT pg_drop_replication_slot('${cfg.slot_name}')) so Strata creates a pgoutput slot`,
      );
    }
    if (found && found.database !== cfg.postgres_database) {
      throw new ApplyError(
        `replication slot "${cfg.slot_name}" belongs to database ${found.database}, not ${cfg.postgres_database}`,
        "use a slot_name of its own for this database",
      );
    }
    return {
      serverVersion: version,
      protocolVersion: protocolVersionFor(version),
      slotExists: Boolean(found),
      walSenderTimeoutMs: Number(
        (await client.query("SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'")).rows[0]
          ?.setting ?? 0,
      ),
      slotConfirmedFlush: found?.confirmed ? parseLsn(found.confirmed) : undefined,
      publicationAllTables: allTables,
    };
  } finally {
    await client.end().catch(() => {});
  }
}

/** The attnums of an upstream table's columns, by name (the baseline for following renames). */
export async function upstreamAttnums(
  cfg: PostgresReplicationConfig,
  relid: number,
): Promise<Map<string, number>> {
  const client = await connect(upstreamConnectionConfig(cfg));
  try {
    const { rows } = await client.query<{ attname: string; attnum: number }>(
      "SELECT attname, attnum FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
      [relid],
    );
    return new Map(rows.map((r) => [r.attname, r.attnum]));
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * For columns added on the primary with a non-volatile default, the value the rows that existed
 * then have (pg_attribute.attmissingval), by column name: an ADD COLUMN rewrites no rows, so the
 * stream never carries it.
 */
export async function upstreamMissingValues(
  cfg: PostgresReplicationConfig,
  relid: number,
  columns: string[],
): Promise<Map<string, string>> {
  const client = await connect(upstreamConnectionConfig(cfg));
  try {
    const { rows } = await client.query<{ attname: string; missing: string | null }>(
      `SELECT attname, (attmissingval::text::text[])[1] AS missing FROM pg_attribute
        WHERE attrelid = $1 AND attname = ANY($2) AND atthasmissing`,
      [relid, columns],
    );
    return new Map(rows.filter((r) => r.missing !== null).map((r) => [r.attname, r.missing as string]));
  } finally {
    await client.end().catch(() => {});
  }
}

/** The publication's tables on the primary now, as [schema, table] pairs. */
export async function publishedTableNames(
  cfg: PostgresReplicationConfig,
  publication: string,
): Promise<[string, string][]> {
  const client = await connect(upstreamConnectionConfig(cfg));
  try {
    const { rows } = await client.query<{ schemaname: string; tablename: string }>(
      "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
      [publication],
    );
    return rows.map((r) => [r.schemaname, r.tablename]);
  } finally {
    await client.end().catch(() => {});
  }
}

/** `schema.table` or `table` from config as a quoted SQL name (a bare name is in public). */
export function qualifiedTableName(name: string): string {
  const dot = name.indexOf(".");
  const [schema, table] = dot === -1 ? ["public", name] : [name.slice(0, dot), name.slice(dot + 1)];
  return `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(table)}`;
}

/**
 * CREATE TYPE for an upstream enum, or CREATE DOMAIN for a domain (base type, default, NOT NULL,
 * CHECK constraints), read from the primary's catalog; other user types: undefined.
 */
export async function describeUpstreamType(
  cfg: PostgresReplicationConfig,
  oid: number,
  qualifiedName: string,
): Promise<string | undefined> {
  const client = await connect(upstreamConnectionConfig(cfg));
  try {
    const { rows: kind } = await client.query<{
      typtype: string;
      base: string;
      notnull: boolean;
      def: string | null;
      checks: string[] | null;
    }>(
      `SELECT t.typtype, format_type(t.typbasetype, t.typtypmod) AS base, t.typnotnull AS notnull, t.typdefault AS def,
              (SELECT array_agg(pg_get_constraintdef(c.oid) ORDER BY c.conname) FROM pg_constraint c
                WHERE c.contypid = t.oid AND c.contype = 'c') AS checks
         FROM pg_type t WHERE t.oid = $1`,
      [oid],
    );
    if (kind[0]?.typtype === "d") {
      const d = kind[0];
      return `CREATE DOMAIN ${qualifiedName} AS ${d.base}${d.def ? ` DEFAULT ${d.def}` : ""}${d.notnull ? " NOT NULL" : ""}${(d.checks ?? []).map((c) => ` ${c}`).join("")}`;
    }
    const { rows } = await client.query<{ label: string }>(
      "SELECT enumlabel AS label FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder",
      [oid],
    );
    if (rows.length === 0) return undefined;
    return `CREATE TYPE ${qualifiedName} AS ENUM (${rows.map((r) => pg.escapeLiteral(r.label)).join(", ")})`;
  } finally {
    await client.end().catch(() => {});
  }
}

/** Drop the slot on the primary (an unfinished initial snapshot's). */
export async function dropSlot(cfg: PostgresReplicationConfig): Promise<void> {
  const client = await connect(upstreamConnectionConfig(cfg));
  try {
    await client.query("SELECT pg_drop_replication_slot($1)", [cfg.slot_name]);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * The publication's tables on the primary now, described as pgoutput's Relation message would
 * describe them (published columns, replica identity, key flags): how a table added to the
 * publication is found before any change to it is streamed.
 */
export async function publishedRelations(
  cfg: PostgresReplicationConfig,
  publication: string,
): Promise<RelationMessage[]> {
  const client = await connect(upstreamConnectionConfig(cfg));
  try {
    const version = Number((await client.query("SHOW server_version_num")).rows[0].server_version_num);
    // Column lists (PostgreSQL 15+) publish only some columns; generated columns are never sent.
    const listed = version >= 150000 ? "AND (pt.attnames IS NULL OR a.attname = ANY (pt.attnames))" : "";
    const { rows } = await client.query<{
      oid: string;
      schema: string;
      name: string;
      ident: string;
      columns: { name: string; type: number; typmod: number; key: boolean }[];
    }>(
      `SELECT c.oid::text AS oid, n.nspname AS schema, c.relname AS name, c.relreplident::text AS ident,
              (SELECT coalesce(json_agg(json_build_object(
                        'name', a.attname, 'type', a.atttypid::bigint, 'typmod', a.atttypmod,
                        'key', c.relreplident = 'f' OR EXISTS (
                          SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND a.attnum = ANY (i.indkey)
                             AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))))
                      ORDER BY a.attnum), '[]')
                 FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ${listed}) AS columns
         FROM pg_publication_tables pt
         JOIN pg_namespace n ON n.nspname = pt.schemaname
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
        WHERE pt.pubname = $1`,
      [publication],
    );
    return rows.map((r) => ({
      tag: "Relation",
      relationOid: Number(r.oid),
      namespace: r.schema,
      name: r.name,
      replicaIdentity: r.ident as RelationMessage["replicaIdentity"],
      columns: r.columns.map((c) => ({
        isKey: c.key,
        name: c.name,
        typeOid: Number(c.type),
        typeMod: c.typmod,
      })),
    }));
  } finally {
    await client.end().catch(() => {});
  }
}
