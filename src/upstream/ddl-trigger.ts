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
// A partition of a table published through its root (`publish_via_partition_root`) that is dropped
// or detached takes rows out of the root without any row change in the stream, and one attached
// brings its rows in. So before such statements (ddl_command_start) the partitions' roots and
// bounds are kept in a setting, and the drop, detach or attach sends what changed: the replica
// removes those rows from the root (a partition's bound is the only description of its rows that
// outlives it), or adds the rows an attached table had. A partition truncated on its own is not
// sent through its root either (pgoutput skips it), and no event trigger fires for TRUNCATE: each
// partition gets a statement trigger (`strata_truncate`, made by setup and by the DDL trigger for
// every new partition) that sends its root and bound the same way.
//
// The trigger never blocks DDL on the primary: with wal_level below logical, or on any error, it
// sends nothing (with a WARNING), and Strata falls back to following Relation messages.
import type pg from "pg";
import type { DdlMessage } from "../apply/applier.ts";
import { ProtocolError } from "../protocol/messages.ts";

export const DDL_TRIGGER_SCHEMA = "strata";
export const DDL_TRIGGERS = [
  "strata_ddl_command_start",
  "strata_ddl_command_end",
  "strata_sql_drop",
] as const;

/** Kept as the comment of `strata.emit_ddl()`, so that a start can tell an older trigger. */
export const DDL_TRIGGER_VERSION = "strata DDL trigger 3 (2026-11-25)";

/** The statements before which partitions' bounds are kept: those that can drop or detach one. */
const PARTITION_STATEMENTS = ["ALTER TABLE", "DROP TABLE", "DROP SCHEMA", "DROP OWNED"];

// The partitions as the statement found them, keyed by oid, with the statement's start time so
// that a later statement never reads them (the setting is the session's: DETACH PARTITION
// CONCURRENTLY runs in two transactions). Only where a publication publishes through roots.
const KEEP_PARTITIONS = `
CREATE OR REPLACE FUNCTION strata.keep_partitions() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  IF current_setting('wal_level') <> 'logical' THEN RETURN; END IF;
  BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubviaroot) THEN
      PERFORM set_config('strata.partitions', '', false);
      RETURN;
    END IF;
    PERFORM set_config('strata.partitions', jsonb_build_object('at', statement_timestamp()::text, 'partitions', COALESCE((
      SELECT jsonb_object_agg(c.oid::text,
               jsonb_build_object('root', jsonb_build_object('oid', r.oid::bigint, 'schema', rn.nspname, 'name', r.relname),
                                  'bound', pg_get_partition_constraintdef(c.oid)))
        FROM pg_class c
        JOIN pg_class r ON r.oid = pg_partition_root(c.oid)
        JOIN pg_namespace rn ON rn.oid = r.relnamespace
       WHERE c.relispartition AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'), '{}'))::text, false);
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'strata: could not read the partitions before this DDL (%); a partition it drops or detaches keeps its rows on the replica', SQLERRM;
  END;
END
$fn$`;

// The partitions kept before this statement, or NULL.
const KEPT_PARTITIONS = `
CREATE OR REPLACE FUNCTION strata.kept_partitions() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $fn$
  SELECT kept->'partitions' FROM (SELECT nullif(current_setting('strata.partitions', true), '')::jsonb AS kept) k
   WHERE kept->>'at' = statement_timestamp()::text
$fn$`;

// A partition truncated on its own: its root and bound, as a dropped partition's, in the
// TRUNCATE's transaction. (A TRUNCATE of the root fires it for every partition too, after the
// root's own Truncate in the stream: the replica then finds nothing left to delete.)
//
// PL/pgSQL compiles a trigger function once per trigger, with its own saved plans, and every
// relation invalidation in that session then visits them all: the work is in functions compiled
// once, so that each copy holds two plans (with the queries inline, an ALTER of a 2,000-partition
// table in the session that had truncated them all took 0.9 s instead of 0.1 s).
const EMIT_TRUNCATE = `
CREATE OR REPLACE FUNCTION strata.truncate_message(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog AS $fn$
  SELECT jsonb_build_object('v', 1, 'tag', 'TRUNCATE', 'query', current_query(), 'truncated', jsonb_build_array(
           jsonb_build_object('oid', c.oid::bigint, 'schema', n.nspname, 'name', c.relname,
             'root', jsonb_build_object('oid', r.oid::bigint, 'schema', rn.nspname, 'name', r.relname),
             'bound', pg_get_partition_constraintdef(c.oid))))::text
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class r ON r.oid = pg_partition_root(c.oid)
    JOIN pg_namespace rn ON rn.oid = r.relnamespace
   WHERE c.oid = rel AND c.relispartition AND current_setting('wal_level') = 'logical'
     AND EXISTS (SELECT 1 FROM pg_publication WHERE pubviaroot)
$fn$;
CREATE OR REPLACE FUNCTION strata.note_truncate(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
DECLARE
  message text;
BEGIN
  BEGIN
    message := strata.truncate_message(rel);
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'strata: could not describe this TRUNCATE for replication (%); the partition''s rows stay on the replica', SQLERRM;
    RETURN;
  END;
  -- Outside the block, as in emit_ddl.
  IF message IS NOT NULL THEN
    PERFORM pg_logical_emit_message(true, 'strata_ddl', message);
  END IF;
END
$fn$;
CREATE OR REPLACE FUNCTION strata.emit_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  PERFORM strata.note_truncate(TG_RELID);
  RETURN NULL;
END
$fn$`;

// The truncate trigger on partitions that have none (rels: only those; NULL: every partition), at
// most lim of them (NULL: all); returns how many it made. Each takes a lock on its partition until
// the transaction ends, so a primary with many partitions gets them a few hundred at a time
// (WATCH_ALL_PARTITIONS), not in one transaction that would fill the lock table.
const WATCH_TRUNCATES = `
DROP FUNCTION IF EXISTS strata.watch_truncates(oid[]);
CREATE OR REPLACE FUNCTION strata.watch_truncates(rels oid[], lim int) RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
  r record;
  made int := 0;
BEGIN
  FOR r IN
    -- (A semi-join, not "= ANY (rels)": an ALTER of a root with thousands of partitions passes them all.)
    SELECT c.oid FROM pg_class c
     WHERE c.relispartition AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
       AND (rels IS NULL OR c.oid IN (SELECT DISTINCT u.oid FROM unnest(rels) u(oid)))
       AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'strata_truncate')
     LIMIT lim
  LOOP
    EXECUTE format('CREATE TRIGGER strata_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION strata.emit_truncate()',
                   r.oid::regclass);
    made := made + 1;
  END LOOP;
  RETURN made;
END
$fn$`;

/** Every partition's truncate trigger, committed a few hundred at a time (outside a transaction). */
const WATCH_ALL_PARTITIONS =
  "DO $$ BEGIN WHILE strata.watch_truncates(NULL, 500) > 0 LOOP COMMIT; END LOOP; END $$";

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
  kept jsonb := strata.kept_partitions();
  detached jsonb;
  attached jsonb := '[]';
  r record;
BEGIN
  IF current_setting('wal_level') <> 'logical' THEN RETURN; END IF;
  PERFORM set_config('strata.partitions', '', false);
  BEGIN
    -- Partitions kept before the statement that are tables of their own now: detached. (Their
    -- own partitions are still partitions, of a new root, and their rows are within its bound.)
    IF kept IS NOT NULL THEN
      SELECT jsonb_agg(jsonb_build_object('oid', c.oid::bigint, 'schema', n.nspname, 'name', c.relname)
                       || (kept->(c.oid::text)))
        INTO detached
        FROM jsonb_object_keys(kept) k(oid)
        JOIN pg_class c ON c.oid = k.oid::oid
        JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE NOT c.relispartition;
      -- Tables that are partitions now and were not: attached, with their rows (and their own
      -- partitions', whose bounds are within theirs).
      FOR r IN
        SELECT c.oid, n.nspname, c.relname, rt.oid AS root, rn.nspname AS root_schema, rt.relname AS root_name
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_class rt ON rt.oid = pg_partition_root(c.oid)
          JOIN pg_namespace rn ON rn.oid = rt.relnamespace
         WHERE c.relispartition AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT kept ? c.oid::text
      LOOP
        EXECUTE format('SELECT jsonb_build_object(''oid'', $1, ''schema'', $2, ''name'', $3, ''hasRows'', EXISTS (SELECT 1 FROM %s),
                          ''root'', jsonb_build_object(''oid'', $4, ''schema'', $5, ''name'', $6))', r.oid::regclass)
          INTO described USING r.oid::bigint, r.nspname, r.relname, r.root::bigint, r.root_schema, r.root_name;
        attached := attached || jsonb_build_array(described);
      END LOOP;
    END IF;
    -- A RENAME COLUMN is reported as a 'table column' with the column's attnum. A detached
    -- partition is described too: it may be published as a table of its own from now on.
    FOR r IN
      SELECT CASE WHEN c.relkind IN ('i', 'I') THEN i.indrelid ELSE c.oid END AS rel,
             jsonb_agg(d.objsubid) FILTER (WHERE d.object_type = 'table column') AS renamed
        FROM pg_event_trigger_ddl_commands() d
        JOIN pg_class c ON c.oid = d.objid
        LEFT JOIN pg_index i ON i.indexrelid = c.oid
       WHERE d.classid = 'pg_class'::regclass
       GROUP BY 1
      UNION
      SELECT (p->>'oid')::oid, NULL FROM jsonb_array_elements(detached) p
    LOOP
      described := strata.describe_table(r.rel);
      IF described IS NOT NULL THEN
        tables := tables || jsonb_build_array(described || jsonb_build_object('renamedColumns', r.renamed));
      END IF;
    END LOOP;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'strata: could not describe this DDL for replication (%); Strata follows it from the stream instead', SQLERRM;
    RETURN;
  END;
  -- New partitions (made, or attached: known where a publication publishes through roots, the
  -- only place their truncates matter) get the truncate trigger; a publication made or changed
  -- looks at every partition.
  IF tg_tag IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE PUBLICATION', 'ALTER PUBLICATION') THEN
    BEGIN
      IF tg_tag IN ('CREATE PUBLICATION', 'ALTER PUBLICATION') THEN
        -- (In the statement's transaction: a bounded number, the rest by setup-primary.)
        IF strata.watch_truncates(NULL, 1000) = 1000 THEN
          RAISE WARNING 'strata: more partitions lack the truncate trigger than one statement should lock; run strata setup-primary to give it to the rest';
        END IF;
      ELSE
        PERFORM strata.watch_truncates(ARRAY(
          SELECT d.objid FROM pg_event_trigger_ddl_commands() d
           WHERE d.classid = 'pg_class'::regclass AND d.object_type = 'table' AND tg_tag = 'CREATE TABLE'
          UNION SELECT (a->>'oid')::oid FROM jsonb_array_elements(attached) a), NULL);
      END IF;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'strata: could not add the truncate trigger to a new partition (%); truncating it on its own leaves its rows on the replica', SQLERRM;
    END;
  END IF;
  -- Sent outside the block above: a message written in a subtransaction of its own is decoded
  -- after the rest of the transaction's changes, not where it was written.
  IF jsonb_array_length(tables) > 0 OR detached IS NOT NULL OR jsonb_array_length(attached) > 0 THEN
    PERFORM pg_logical_emit_message(true, 'strata_ddl',
      (jsonb_build_object('v', 1, 'tag', tg_tag, 'query', current_query(), 'tables', tables)
       || CASE WHEN detached IS NOT NULL THEN jsonb_build_object('detached', detached) ELSE '{}' END
       || CASE WHEN jsonb_array_length(attached) > 0 THEN jsonb_build_object('attached', attached) ELSE '{}' END)::text);
  END IF;
END
$fn$`;

const EMIT_DROP = `
CREATE OR REPLACE FUNCTION strata.emit_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
  dropped jsonb;
  kept jsonb := strata.kept_partitions();
BEGIN
  IF current_setting('wal_level') <> 'logical' THEN RETURN; END IF;
  BEGIN
    -- A partition comes with its root and bound, kept before the statement (keep_partitions).
    SELECT jsonb_agg(jsonb_build_object('type', o.object_type, 'oid', o.objid::bigint,
                                        'schema', o.schema_name, 'name', o.object_name)
                     || COALESCE(kept->(o.objid::text), '{}'))
      INTO dropped
      FROM pg_event_trigger_dropped_objects() o
     WHERE o.classid = 'pg_class'::regclass AND NOT o.is_temporary
       -- Every table, also those a cascade took (DROP SCHEMA ... CASCADE, a parent's partitions);
       -- only the indexes named by the statement (the others went with their tables).
       AND (o.object_type = 'table' OR (o.object_type = 'index' AND o.original));
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'strata: could not describe this DROP for replication (%)', SQLERRM;
    RETURN;
  END;
  -- Outside the block, as in emit_ddl.
  IF dropped IS NOT NULL THEN
    PERFORM pg_logical_emit_message(true, 'strata_ddl',
      jsonb_build_object('v', 1, 'tag', tg_tag, 'query', current_query(), 'dropped', dropped)::text);
  END IF;
END
$fn$`;

/** The statements that install the trigger (idempotent: functions replaced, triggers recreated). */
export function installStatements(): string[] {
  return [
    "CREATE SCHEMA IF NOT EXISTS strata",
    "COMMENT ON SCHEMA strata IS 'Strata: the event trigger that sends DDL to Strata replicas (strata setup-primary --uninstall removes it)'",
    DESCRIBE_TABLE,
    KEEP_PARTITIONS,
    KEPT_PARTITIONS,
    EMIT_DDL,
    EMIT_DROP,
    EMIT_TRUNCATE,
    WATCH_TRUNCATES,
    `COMMENT ON FUNCTION strata.emit_ddl() IS '${DDL_TRIGGER_VERSION}'`,
    "DROP EVENT TRIGGER IF EXISTS strata_ddl_command_start",
    "DROP EVENT TRIGGER IF EXISTS strata_ddl_command_end",
    "DROP EVENT TRIGGER IF EXISTS strata_sql_drop",
    `CREATE EVENT TRIGGER strata_ddl_command_start ON ddl_command_start WHEN TAG IN (${PARTITION_STATEMENTS.map((t) => `'${t}'`).join(", ")}) EXECUTE PROCEDURE strata.keep_partitions()`,
    "CREATE EVENT TRIGGER strata_ddl_command_end ON ddl_command_end EXECUTE PROCEDURE strata.emit_ddl()",
    "CREATE EVENT TRIGGER strata_sql_drop ON sql_drop EXECUTE PROCEDURE strata.emit_drop()",
  ];
}

/**
 * What runs after installStatements() committed, each statement on its own (not in a transaction
 * block): the partitions' truncate triggers, committed in batches.
 */
export function installFollowUpStatements(): string[] {
  return [WATCH_ALL_PARTITIONS];
}

/** The statements that remove it again (idempotent). */
export function uninstallStatements(): string[] {
  return [
    "DROP EVENT TRIGGER IF EXISTS strata_ddl_command_start",
    "DROP EVENT TRIGGER IF EXISTS strata_ddl_command_end",
    "DROP EVENT TRIGGER IF EXISTS strata_sql_drop",
    // The partitions' truncate triggers go with their function.
    "DROP FUNCTION IF EXISTS strata.emit_truncate() CASCADE",
    "DROP FUNCTION IF EXISTS strata.watch_truncates(oid[], int)",
    "DROP FUNCTION IF EXISTS strata.note_truncate(oid)",
    "DROP FUNCTION IF EXISTS strata.truncate_message(oid)",
    "DROP FUNCTION IF EXISTS strata.emit_ddl()",
    "DROP FUNCTION IF EXISTS strata.emit_drop()",
    "DROP FUNCTION IF EXISTS strata.keep_partitions()",
    "DROP FUNCTION IF EXISTS strata.kept_partitions()",
    "DROP FUNCTION IF EXISTS strata.describe_table(oid)",
  ];
}

/**
 * Whether the trigger on the primary `client` is connected to is this version's, an older one's
 * (the primary's, so a Strata upgrade does not replace it), or not installed.
 */
export async function ddlTriggerState(client: pg.Client): Promise<"current" | "outdated" | "absent"> {
  const { rows } = await client.query<{ triggers: number; version: string | null }>(
    `SELECT (SELECT count(*)::int FROM pg_event_trigger WHERE evtname = ANY($1)) AS triggers,
            obj_description(to_regprocedure('strata.emit_ddl()'), 'pg_proc') AS version`,
    [[...DDL_TRIGGERS]],
  );
  if (rows[0].triggers === 0) return "absent";
  return rows[0].triggers === DDL_TRIGGERS.length && rows[0].version === DDL_TRIGGER_VERSION
    ? "current"
    : "outdated";
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
