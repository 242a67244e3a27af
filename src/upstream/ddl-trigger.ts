// The event trigger that `strata setup-primary` installs on the primary, so that DDL reaches the
// replica in order with the rows.
//
//   DDL statement on the primary ─▶ ddl_command_end / sql_drop event trigger
//     ─▶ pg_logical_emit_message(transactional, 'strata_ddl', {statement, tables after it, drops})
//     ─▶ WAL, inside the DDL's own transaction ─▶ pgoutput (messages = true) ─▶ Strata
//     ─▶ the replica table is brought to the described shape, in that transaction's commit
//
// The trigger sends descriptions read from the catalog after the statement, not the statement to
// replay: a statement's text depends on its search_path, may hold several statements (DML too),
// and may name objects the replica has not got. A description (oid, attnums, types, NOT NULL,
// defaults, keys, indexes) is what the replica must look like, whatever the statement was.
//
// The trigger never blocks DDL on the primary: with wal_level below logical, or on any error, it
// sends nothing (with a WARNING), and Strata falls back to following Relation messages.
import type pg from "pg";
import type { DdlMessage } from "../apply/applier.ts";
import { ProtocolError } from "../protocol/messages.ts";

export const DDL_TRIGGER_SCHEMA = "strata";
export const DDL_TRIGGERS = ["strata_ddl_command_end", "strata_sql_drop"] as const;

const DESCRIBE_TABLE = `
CREATE OR REPLACE FUNCTION strata.describe_table(rel oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $fn$
  SELECT jsonb_build_object(
    'oid', c.oid::bigint,
    'schema', n.nspname,
    'name', c.relname,
    'columns', COALESCE((
      SELECT jsonb_agg(jsonb_build_object(
               'attnum', a.attnum, 'name', a.attname,
               'type', format_type(a.atttypid, a.atttypmod),
               'typeOid', a.atttypid::bigint, 'typeMod', a.atttypmod,
               'notNull', a.attnotnull,
               'default', CASE WHEN pg_get_expr(d.adbin, d.adrelid) NOT LIKE '%nextval(%'
                               THEN pg_get_expr(d.adbin, d.adrelid) END)
             ORDER BY a.attnum)
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '[]'),
    'constraints', COALESCE((
      SELECT jsonb_agg(jsonb_build_object('name', k.conname, 'def', pg_get_constraintdef(k.oid)) ORDER BY k.conname)
        FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype IN ('p', 'u')), '[]'),
    'indexes', COALESCE((
      SELECT jsonb_agg(jsonb_build_object('name', ic.relname, 'def', pg_get_indexdef(i.indexrelid)) ORDER BY ic.relname)
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
       WHERE i.indrelid = c.oid
         AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = c.oid)), '[]'),
    'publications', COALESCE((
      SELECT jsonb_agg(DISTINCT p.pubname) FROM pg_publication_tables p
       WHERE p.schemaname = n.nspname AND p.tablename = c.relname), '[]'))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = rel AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
$fn$`;

const EMIT_DDL = `
CREATE OR REPLACE FUNCTION strata.emit_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
  tables jsonb := '[]';
  described jsonb;
  r record;
BEGIN
  IF current_setting('wal_level') <> 'logical' THEN RETURN; END IF;
  BEGIN
    -- A RENAME COLUMN is reported as a 'table column' with the column's attnum.
    FOR r IN
      SELECT CASE WHEN c.relkind IN ('i', 'I') THEN i.indrelid ELSE c.oid END AS rel,
             jsonb_agg(d.objsubid) FILTER (WHERE d.object_type = 'table column') AS renamed
        FROM pg_event_trigger_ddl_commands() d
        JOIN pg_class c ON c.oid = d.objid
        LEFT JOIN pg_index i ON i.indexrelid = c.oid
       WHERE d.classid = 'pg_class'::regclass
       GROUP BY 1
    LOOP
      described := strata.describe_table(r.rel);
      IF described IS NOT NULL THEN
        tables := tables || jsonb_build_array(described || jsonb_build_object('renamedColumns', r.renamed));
      END IF;
    END LOOP;
    IF jsonb_array_length(tables) > 0 THEN
      PERFORM pg_logical_emit_message(true, 'strata_ddl',
        jsonb_build_object('v', 1, 'tag', tg_tag, 'query', current_query(), 'tables', tables)::text);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'strata: could not describe this DDL for replication (%); Strata follows it from the stream instead', SQLERRM;
  END;
END
$fn$`;

const EMIT_DROP = `
CREATE OR REPLACE FUNCTION strata.emit_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
  dropped jsonb;
BEGIN
  IF current_setting('wal_level') <> 'logical' THEN RETURN; END IF;
  BEGIN
    SELECT jsonb_agg(jsonb_build_object('type', o.object_type, 'oid', o.objid::bigint,
                                        'schema', o.schema_name, 'name', o.object_name))
      INTO dropped
      FROM pg_event_trigger_dropped_objects() o
     WHERE o.classid = 'pg_class'::regclass AND NOT o.is_temporary
       -- Every table, also those a cascade took (DROP SCHEMA ... CASCADE, a parent's partitions);
       -- only the indexes named by the statement (the others went with their tables).
       AND (o.object_type = 'table' OR (o.object_type = 'index' AND o.original));
    IF dropped IS NOT NULL THEN
      PERFORM pg_logical_emit_message(true, 'strata_ddl',
        jsonb_build_object('v', 1, 'tag', tg_tag, 'query', current_query(), 'dropped', dropped)::text);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'strata: could not describe this DROP for replication (%)', SQLERRM;
  END;
END
$fn$`;

/** The statements that install the trigger (idempotent: functions replaced, triggers recreated). */
export function installStatements(): string[] {
  return [
    "CREATE SCHEMA IF NOT EXISTS strata",
    "COMMENT ON SCHEMA strata IS 'Strata: the event trigger that sends DDL to Strata replicas (strata setup-primary --uninstall removes it)'",
    DESCRIBE_TABLE,
    EMIT_DDL,
    EMIT_DROP,
    "DROP EVENT TRIGGER IF EXISTS strata_ddl_command_end",
    "DROP EVENT TRIGGER IF EXISTS strata_sql_drop",
    "CREATE EVENT TRIGGER strata_ddl_command_end ON ddl_command_end EXECUTE PROCEDURE strata.emit_ddl()",
    "CREATE EVENT TRIGGER strata_sql_drop ON sql_drop EXECUTE PROCEDURE strata.emit_drop()",
  ];
}

/** The statements that remove it again (idempotent). */
export function uninstallStatements(): string[] {
  return [
    "DROP EVENT TRIGGER IF EXISTS strata_ddl_command_end",
    "DROP EVENT TRIGGER IF EXISTS strata_sql_drop",
    "DROP FUNCTION IF EXISTS strata.emit_ddl()",
    "DROP FUNCTION IF EXISTS strata.emit_drop()",
    "DROP FUNCTION IF EXISTS strata.describe_table(oid)",
  ];
}

/** Whether the trigger is installed on the primary `client` is connected to. */
export async function ddlTriggerInstalled(client: pg.Client): Promise<boolean> {
  const { rowCount } = await client.query("SELECT 1 FROM pg_event_trigger WHERE evtname = ANY($1)", [
    [...DDL_TRIGGERS],
  ]);
  return rowCount === DDL_TRIGGERS.length;
}

/** The prefix of the logical decoding messages the trigger emits. */
export const DDL_MESSAGE_PREFIX = "strata_ddl";

/** A DDL message's JSON; a message Strata cannot read is a protocol error with its remedy. */
export function parseDdlMessage(content: Buffer): DdlMessage {
  try {
    const parsed = JSON.parse(content.toString("utf8")) as DdlMessage;
    if (typeof parsed !== "object" || parsed === null || typeof parsed.query !== "string")
      throw new Error("not a DDL description");
    return parsed;
  } catch (err) {
    throw new ProtocolError(
      `a "${DDL_MESSAGE_PREFIX}" message from the primary is not one Strata understands (${(err as Error).message}); run \`strata setup-primary\` again to install this version's event trigger`,
    );
  }
}
