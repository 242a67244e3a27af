// Writes and commits from SQL, in the store, for databases that do not replicate from upstream.
//
//   client writes ──capture triggers──▶ strata.working_changes ─┐   dolt_add: staged = true
//   client DDL ──event triggers─────▶ strata.working_schema_changes ┤  dolt_reset: staged = false,
//                                                                  │   or --hard: undone
//   dolt_commit('-m', ...) / COMMIT with dolt_transaction_commit ──┴▶ strata.commits + changes
//
// Everything is in the store, so it works in the client's own transaction (dolt_commit sees the
// writes before it and is rolled back with them) and from any client, through the front door or
// not. A database that replicates (strata.database_role) takes no writes to replicated tables
// (the replica guard) and captures nothing: its commits are the primary's transactions. Strata's
// own connections set strata.applying, which the triggers let through.
//
// A SQL commit's hash covers a canonical form of the commit: its header (parent, author, date,
// message), then the digest of each schema change's and row change's line (row images as jsonb
// text), in order. Equal hashes mean equal history, as for replicated commits.

export const WORKING_SET_SQL = `
CREATE SEQUENCE IF NOT EXISTS strata.working_seq;
CREATE TABLE IF NOT EXISTS strata.working_changes (
  id bigint PRIMARY KEY DEFAULT nextval('strata.working_seq'),
  relid oid NOT NULL,
  rel text NOT NULL,
  op "char" NOT NULL,
  row_key jsonb,
  old_key jsonb,
  old_row jsonb,
  new_row jsonb,
  staged boolean NOT NULL DEFAULT false
);
-- As-of reads find a key's uncommitted changes (see surface-sql.ts).
CREATE INDEX IF NOT EXISTS working_changes_row ON strata.working_changes (rel, row_key);
CREATE INDEX IF NOT EXISTS working_changes_moved_row ON strata.working_changes (rel, old_key) WHERE old_key IS NOT NULL;

-- Every change, committed or not: the working set comes after the last commit, so that a
-- table's state as of a commit is not taken from rows changed since.
CREATE OR REPLACE VIEW strata.changes_and_working AS
  SELECT commit_seq, ord::bigint AS ord, rel, op, row_key, old_key, old_row, new_row FROM strata.changes
  UNION ALL
  SELECT 9223372036854775807, id, rel, op, row_key, old_key, old_row, new_row FROM strata.working_changes;

CREATE TABLE IF NOT EXISTS strata.working_schema_changes (
  id bigint PRIMARY KEY DEFAULT nextval('strata.working_seq'),
  relid oid NOT NULL,
  rel text NOT NULL,
  kind text NOT NULL,
  ddl text NOT NULL,
  staged boolean NOT NULL DEFAULT false
);
-- The table's definition after the change, taken when it happened (with the columns it renamed:
-- column-renames-sql.ts). Before 2026-11-24 definitions were taken at commit (NULL here).
ALTER TABLE strata.working_schema_changes ADD COLUMN IF NOT EXISTS definition jsonb;
CREATE TABLE IF NOT EXISTS strata.database_role (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  replicating boolean NOT NULL
);

CREATE OR REPLACE FUNCTION strata.replicating() RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT coalesce((SELECT replicating FROM strata.database_role), false) $$;

CREATE OR REPLACE FUNCTION strata.internal_writer() RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT coalesce(current_setting('strata.applying', true), '') = 'on' $$;

CREATE OR REPLACE FUNCTION strata.primary_key_columns(tbl oid) RETURNS text[]
LANGUAGE sql STABLE AS $$
  SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
    FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
   WHERE i.indrelid = tbl AND i.indisprimary
$$;

-- Capture, by the table's root: a partition's rows are its partition tree's root's, whichever
-- table a statement names. Inserts and deletes are captured per statement from its transition
-- table (one INSERT ... SELECT, not a function call per row). The root and each partition have
-- their own statement triggers, and a statement fires only those of the table it names, so a
-- row is captured once whether it is written through the root or straight into its partition.
-- The root's oid, name and key are the triggers' arguments (set again after DDL), so capturing
-- reads no catalog; PL/pgSQL keeps a compiled copy (and plans) per table.
--
-- A plain table's updates are captured per row, since a transition table does not pair old and
-- new. In a partition tree they are captured per statement instead, old and new paired by their
-- position in the transition tables (an updated row adds one to each, in the same step): a row
-- that an UPDATE moves to another partition fires no row UPDATE trigger, and only the statement's
-- transition tables see it. Deletes in an inheritance hierarchy are captured per row: a DELETE
-- on a parent deletes its children's rows too, its transition table holds them all, and the
-- children's statement triggers do not fire; each table's row triggers fire for its own rows.
CREATE OR REPLACE FUNCTION strata.capture_statement() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  IF strata.internal_writer() THEN RETURN NULL; END IF;
  -- PL/pgSQL plans each branch at its first use, so each trigger only ever touches its own
  -- transition tables.
  IF TG_OP = 'INSERT' THEN
    INSERT INTO strata.working_changes (relid, rel, op, row_key, new_row)
    SELECT TG_ARGV[0]::oid, TG_ARGV[1], 'I', strata.key_of(to_jsonb(n.*), TG_ARGV[2]::text[]), to_jsonb(n.*)
      FROM strata_inserted n;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO strata.working_changes (relid, rel, op, row_key, old_row)
    SELECT TG_ARGV[0]::oid, TG_ARGV[1], 'D', strata.key_of(to_jsonb(o.*), TG_ARGV[2]::text[]), to_jsonb(o.*)
      FROM strata_deleted o;
  ELSE
    INSERT INTO strata.working_changes (relid, rel, op, row_key, old_key, old_row, new_row)
    SELECT TG_ARGV[0]::oid, TG_ARGV[1], 'U', k.new_key, CASE WHEN k.old_key IS DISTINCT FROM k.new_key THEN k.old_key END,
           o.img, n.img
      FROM (SELECT row_number() OVER () AS pos, to_jsonb(x.*) AS img FROM strata_old x) o
      JOIN (SELECT row_number() OVER () AS pos, to_jsonb(x.*) AS img FROM strata_new x) n USING (pos)
      CROSS JOIN LATERAL (SELECT strata.key_of(o.img, TG_ARGV[2]::text[]) AS old_key,
                                 strata.key_of(n.img, TG_ARGV[2]::text[]) AS new_key) k
     ORDER BY pos;
  END IF;
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION strata.capture_updated() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  new_key jsonb;
  old_key jsonb;
BEGIN
  IF strata.internal_writer() THEN RETURN NULL; END IF;
  new_key := strata.key_of(to_jsonb(NEW), TG_ARGV[2]::text[]);
  old_key := strata.key_of(to_jsonb(OLD), TG_ARGV[2]::text[]);
  INSERT INTO strata.working_changes (relid, rel, op, row_key, old_key, old_row, new_row)
  VALUES (TG_ARGV[0]::oid, TG_ARGV[1], 'U', new_key, CASE WHEN old_key IS DISTINCT FROM new_key THEN old_key END,
          to_jsonb(OLD), to_jsonb(NEW));
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION strata.capture_deleted() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  IF strata.internal_writer() THEN RETURN NULL; END IF;
  INSERT INTO strata.working_changes (relid, rel, op, row_key, old_row)
  VALUES (TG_ARGV[0]::oid, TG_ARGV[1], 'D', strata.key_of(to_jsonb(OLD), TG_ARGV[2]::text[]), to_jsonb(OLD));
  RETURN NULL;
END
$fn$;

-- TRUNCATE fires the truncate triggers of every table it empties (a partitioned table's
-- partitions, an inheritance parent's children): each records the rows it holds itself.
CREATE OR REPLACE FUNCTION strata.capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  IF strata.internal_writer() THEN RETURN NULL; END IF;
  EXECUTE format(
    'INSERT INTO strata.working_changes (relid, rel, op, row_key, old_row)
     SELECT %s, %L, ''T'', strata.key_of(to_jsonb(t.*), %L::text[]), to_jsonb(t.*) FROM ONLY %s t',
    TG_ARGV[0]::oid, TG_ARGV[1], TG_ARGV[2], TG_RELID::regclass);
  RETURN NULL;
END
$fn$;

-- A table's name as history keeps it (schema.table, unquoted).
CREATE OR REPLACE FUNCTION strata.rel_of(tbl oid) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl
$$;

-- The table whose history a capture trigger writes to: its first argument (NULL: none).
CREATE OR REPLACE FUNCTION strata.capture_root_of(tbl oid) RETURNS oid
LANGUAGE sql STABLE AS $$
  SELECT split_part(encode(tgargs, 'escape'), '\\000', 1)::oid
    FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'strata_capture_insert' AND tgparentid = 0
$$;

-- The partitions whose writes are captured into their tree's root's history, and that root. When
-- a partition is dropped its catalog rows are gone by the time sql_drop fires, its root with them:
-- this is where on_sql_drop finds the root whose rows went. Kept by put_capture_triggers, and
-- made anew at every start (oids do not survive a branch's copy).
CREATE TABLE IF NOT EXISTS strata.capture_members (
  relid oid PRIMARY KEY,
  root oid NOT NULL
);
-- Its parent too: the table to detach it from, which a refused drop names.
ALTER TABLE strata.capture_members ADD COLUMN IF NOT EXISTS parent oid;

-- The capture triggers of tbl, writing to root's history (tbl itself, or its partition tree's
-- root). Only what differs is made again: this runs for every captured partition tree at start.
CREATE OR REPLACE FUNCTION strata.put_capture_triggers(tbl regclass, root regclass) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  in_tree boolean := tbl <> root OR (SELECT relkind = 'p' FROM pg_class WHERE oid = tbl);
  row_deletes boolean := NOT in_tree AND EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = tbl OR inhrelid = tbl);
  args text[];
  w record;
  have record;
BEGIN
  IF tbl <> root THEN
    INSERT INTO strata.capture_members AS m (relid, root, parent)
    VALUES (tbl, root, (SELECT inhparent FROM pg_inherits WHERE inhrelid = tbl))
      ON CONFLICT (relid) DO UPDATE SET root = excluded.root, parent = excluded.parent
      WHERE (m.root, m.parent) IS DISTINCT FROM (excluded.root, excluded.parent);
  ELSE
    DELETE FROM strata.capture_members WHERE relid = tbl;
  END IF;
  args := ARRAY[root::oid::text, strata.rel_of(root), coalesce(strata.primary_key_columns(root), '{}')::text];
  FOR w IN SELECT * FROM (VALUES
      ('strata_capture_insert', false, 'AFTER INSERT', 'REFERENCING NEW TABLE AS strata_inserted FOR EACH STATEMENT', 'capture_statement'),
      ('strata_capture_delete', row_deletes, 'AFTER DELETE',
       CASE WHEN row_deletes THEN 'FOR EACH ROW' ELSE 'REFERENCING OLD TABLE AS strata_deleted FOR EACH STATEMENT' END,
       CASE WHEN row_deletes THEN 'capture_deleted' ELSE 'capture_statement' END),
      ('strata_capture_update', NOT in_tree, 'AFTER UPDATE',
       CASE WHEN in_tree THEN 'REFERENCING OLD TABLE AS strata_old NEW TABLE AS strata_new FOR EACH STATEMENT' ELSE 'FOR EACH ROW' END,
       CASE WHEN in_tree THEN 'capture_statement' ELSE 'capture_updated' END),
      ('strata_capture_truncate', false, 'BEFORE TRUNCATE', 'FOR EACH STATEMENT', 'capture_truncate')
    ) AS v(name, per_row, event, how, fn) LOOP
    SELECT t.tgtype & 1 = 1 AS per_row, p.proname::text AS fn,
           t.tgargs = (SELECT string_agg(convert_to(a, getdatabaseencoding()) || '\\x00'::bytea, ''::bytea ORDER BY i)
                         FROM unnest(args) WITH ORDINALITY u(a, i)) AS same_args
      INTO have
      FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
     WHERE t.tgrelid = tbl AND t.tgname = w.name AND t.tgparentid = 0;
    CONTINUE WHEN FOUND AND have.per_row = w.per_row AND have.fn = w.fn AND have.same_args;
    -- A trigger cannot turn from per row to per statement in place: replacing a partitioned
    -- table's row trigger would leave the copies PostgreSQL made of it on its partitions.
    IF FOUND AND have.per_row <> w.per_row THEN EXECUTE format('DROP TRIGGER %I ON %s', w.name, tbl); END IF;
    EXECUTE format('CREATE OR REPLACE TRIGGER %I %s ON %s %s EXECUTE FUNCTION strata.%I(%L, %L, %L)',
                   w.name, w.event, tbl, w.how, w.fn, args[1], args[2], args[3]);
  END LOOP;
END
$fn$;

-- A copied database (a branch: pg_dump and pg_restore) has the source's capture triggers, whose
-- arguments name the root by the source's oid: point them at the copy's tables, found by the
-- root's name (the trigger's second argument).
CREATE OR REPLACE FUNCTION strata.rebind_capture() RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  t record;
BEGIN
  DELETE FROM strata.capture_members;
  FOR t IN SELECT x.tbl, to_regclass(format('%I.%I', split_part(x.rel, '.', 1), substr(x.rel, strpos(x.rel, '.') + 1))) AS root
             FROM (SELECT tgrelid::regclass AS tbl, split_part(encode(tgargs, 'escape'), '\\000', 2) AS rel
                     FROM pg_trigger WHERE tgname = 'strata_capture_insert' AND tgparentid = 0) x
            ORDER BY x.tbl::text <> x.rel LOOP -- roots first
    CONTINUE WHEN t.root IS NULL;
    PERFORM strata.put_capture_triggers(t.tbl, t.root);
  END LOOP;
END
$fn$;

-- Capture a table's writes (and, for a partition, its whole tree's). Tables other than ordinary
-- and partitioned ones (foreign tables among partitions) are not captured.
CREATE OR REPLACE FUNCTION strata.attach_capture(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  IF (SELECT relkind NOT IN ('r', 'p') FROM pg_class WHERE oid = tbl) THEN RETURN; END IF;
  IF pg_partition_root(tbl) IS NOT NULL THEN
    PERFORM strata.capture_partition_tree(tbl, false);
    RETURN;
  END IF;
  PERFORM strata.put_capture_triggers(tbl, tbl);
  -- A table that inherits: its parents' deletes are captured per row from now on too (see above).
  PERFORM strata.put_capture_triggers(i.inhparent::regclass, i.inhparent::regclass)
     FROM pg_inherits i WHERE i.inhrelid = tbl AND strata.capture_root_of(i.inhparent) = i.inhparent;
END
$fn$;

-- A table new to the working set, with the rows it holds (CREATE TABLE AS, a detached partition).
CREATE OR REPLACE FUNCTION strata.record_new_table(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  v_rel text := strata.rel_of(tbl);
BEGIN
  PERFORM strata.attach_capture(tbl);
  INSERT INTO strata.working_schema_changes (relid, rel, kind, ddl, definition)
  VALUES (tbl, v_rel, 'CREATE TABLE', 'CREATE TABLE ' || (SELECT identity FROM pg_identify_object('pg_class'::regclass, tbl, 0)),
          strata.recorded_definition(tbl));
  EXECUTE format(
    'INSERT INTO strata.working_changes (relid, rel, op, row_key, new_row)
     SELECT %s, %L, ''I'', %s, to_jsonb(t.*) FROM %s t',
    tbl::oid, v_rel, coalesce(strata.key_expression(strata.primary_key_columns(tbl), 't'), 'NULL::jsonb'), tbl);
END
$fn$;

-- A table gone from the working set's tables: dropped, or become a partition (whose rows are its
-- root's from then on).
CREATE OR REPLACE FUNCTION strata.record_table_gone(tbl oid, p_schema text, p_table text, identity text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  DELETE FROM strata.table_ids WHERE relid = tbl;
  PERFORM strata.drop_table_surface(p_schema, p_table);
  IF NOT strata.replicating() THEN
    INSERT INTO strata.working_schema_changes (relid, rel, kind, ddl)
    VALUES (tbl, p_schema || '.' || p_table, 'DROP TABLE', 'DROP TABLE ' || identity);
  END IF;
END
$fn$;

-- Rows that join or leave a partition tree's root, as inserts into its history or deletes from it.
CREATE OR REPLACE FUNCTION strata.record_rows_moved(root regclass, source text, op "char") RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE format(
    'INSERT INTO strata.working_changes (relid, rel, op, row_key, %I)
     SELECT %s, %L, %L, strata.key_of(to_jsonb(t.*), %L::text[]), to_jsonb(t.*) FROM %s t',
    CASE op WHEN 'D' THEN 'old_row' ELSE 'new_row' END,
    root::oid, strata.rel_of(root), op, coalesce(strata.primary_key_columns(root), '{}'), source);
END
$fn$;

-- Point the capture of a partition tree (the one member is in) at its root. With record_moves,
-- after ATTACH or DETACH PARTITION: a table that joined the tree leaves the working set's tables
-- (it was one of its own) and its rows are inserted into the root's history; a table that left it
-- takes its rows out of the root's history and is a new table of its own. Returns whether any did.
CREATE OR REPLACE FUNCTION strata.capture_partition_tree(member regclass, record_moves boolean) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
  root regclass := pg_partition_root(member);
  m record;
  was oid;
  moved boolean := false;
BEGIN
  IF root IS NULL THEN RETURN false; END IF;
  IF record_moves THEN
    -- Tables that left (their triggers still name the root); a partitioned one takes its own
    -- partitions along.
    FOR m IN SELECT t.tgrelid::regclass AS tbl FROM pg_trigger t
              WHERE t.tgname = 'strata_capture_insert' AND t.tgparentid = 0 AND t.tgrelid <> root
                AND strata.capture_root_of(t.tgrelid) = root AND coalesce(pg_partition_root(t.tgrelid), t.tgrelid) = t.tgrelid LOOP
      PERFORM strata.record_rows_moved(root, m.tbl::text, 'D');
      PERFORM strata.record_new_table(m.tbl);
      moved := true;
    END LOOP;
  END IF;
  -- The root first: before 2026-11-24 its update trigger was per row, and PostgreSQL copied that
  -- onto every partition, where it would clash with the partitions' own.
  PERFORM strata.put_capture_triggers(root, root);
  FOR m IN SELECT t.relid::regclass AS tbl, t.isleaf, n.nspname, c.relname
             FROM pg_partition_tree(root) t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE t.relid <> root AND c.relkind IN ('r', 'p') ORDER BY t.level LOOP
    was := strata.capture_root_of(m.tbl);
    IF record_moves AND was IS DISTINCT FROM root::oid THEN
      IF was = m.tbl::oid THEN
        PERFORM strata.record_table_gone(m.tbl, m.nspname, m.relname,
                                         (SELECT identity FROM pg_identify_object('pg_class'::regclass, m.tbl, 0)));
      END IF;
      IF m.isleaf THEN PERFORM strata.record_rows_moved(root, format('ONLY %s', m.tbl), 'I'); END IF;
      moved := true;
    END IF;
    PERFORM strata.put_capture_triggers(m.tbl, root);
  END LOOP;
  RETURN moved;
END
$fn$;

-- A table replicated from upstream: clients' writes are refused (unless allowed), none captured.
CREATE OR REPLACE FUNCTION strata.replica_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  IF strata.internal_writer() OR dolt.setting('strata_allow_replica_writes') = '1' THEN RETURN NULL; END IF;
  RAISE EXCEPTION 'table %.% is replicated from the primary: clients cannot write to it', TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = '25006',
          HINT = 'write on the primary; or SET strata_allow_replica_writes TO 1 to write here anyway (such writes are not versioned, and the primary''s next change to those rows may conflict with them)';
END
$fn$;

CREATE OR REPLACE FUNCTION strata.guard_replicated(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'strata_replica_guard') THEN RETURN; END IF;
  EXECUTE format('DROP TRIGGER IF EXISTS strata_capture_insert ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS strata_capture_delete ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS strata_capture_update ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS strata_capture_truncate ON %s', tbl);
  EXECUTE format('CREATE TRIGGER strata_replica_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s
                  FOR EACH STATEMENT EXECUTE FUNCTION strata.replica_guard()', tbl);
END
$fn$;

-- A database that starts replicating: nothing of a working set can be committed there, so the
-- capture stops and what was captured goes (returns how many changes went).
CREATE OR REPLACE FUNCTION strata.stop_capturing() RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
  t record;
  dropped bigint;
BEGIN
  FOR t IN SELECT tgrelid::regclass AS tbl, tgname FROM pg_trigger WHERE tgname LIKE 'strata_capture_%' AND tgparentid = 0 LOOP
    EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.tbl);
  END LOOP;
  DELETE FROM strata.capture_members;
  WITH w AS (DELETE FROM strata.working_changes RETURNING 1),
       s AS (DELETE FROM strata.working_schema_changes RETURNING 1)
  SELECT (SELECT count(*) FROM w) + (SELECT count(*) FROM s) INTO dropped;
  RETURN dropped;
END
$fn$;

-- A table's schema change (its definition after it, taken now).
CREATE OR REPLACE FUNCTION strata.record_altered(tbl oid) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  v_rel text := strata.rel_of(tbl);
  def jsonb := strata.recorded_definition(tbl);
  before jsonb;
  filled text[];
  retyped boolean;
  lo bigint;
  keys text[];
BEGIN
  -- The definition before this change: the working set's last, else the last committed.
  SELECT coalesce(
    (SELECT w.definition FROM strata.working_schema_changes w WHERE w.rel = v_rel AND w.definition ? 'columns' ORDER BY w.id DESC LIMIT 1),
    (SELECT s.definition FROM strata.schema_changes s WHERE s.rel = v_rel AND s.definition ? 'columns' ORDER BY s.commit_seq DESC, s.ord DESC LIMIT 1))
    INTO before;
  INSERT INTO strata.working_schema_changes (relid, rel, kind, ddl, definition)
  VALUES (tbl, v_rel, 'ALTER TABLE',
          'ALTER TABLE ' || (SELECT identity FROM pg_identify_object('pg_class'::regclass, tbl, 0)),
          def);
  IF before IS NULL OR def IS NULL THEN RETURN; END IF;
  -- Columns whose type changed: PostgreSQL rewrote every row (with USING, to other values).
  -- Where history holds every row of a keyed table, each row's change is recorded, from its last
  -- image in history (the value before) to the row now, so that the older values stay history.
  SELECT EXISTS (
    SELECT 1 FROM pg_attribute a JOIN jsonb_array_elements(before -> 'columns') c ON c ->> 'name' = a.attname
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
       AND c ->> 'type' IS DISTINCT FROM format_type(a.atttypid, a.atttypmod)) INTO retyped;
  keys := strata.primary_key_columns(tbl);
  IF retyped AND keys IS NOT NULL THEN
    lo := strata.complete_history_start(tbl, v_rel);
    IF lo IS NOT NULL AND NOT EXISTS (SELECT 1 FROM strata.changes_and_working c
                                       WHERE c.rel = v_rel AND c.commit_seq > lo AND c.row_key IS NULL) THEN
      EXECUTE format(
        'INSERT INTO strata.working_changes (relid, rel, op, row_key, old_row, new_row)
         SELECT $1, $2, ''U'', h.row_key, h.to_row, to_jsonb(t.*)
           FROM %s t JOIN strata.key_states($2, $3, 9223372036854775807) h ON h.row_key = %s
          WHERE h.to_row IS DISTINCT FROM to_jsonb(t.*)',
        strata.own_rows(tbl::regclass), strata.key_expression(keys, 't'))
        USING tbl, v_rel, lo;
      RETURN; -- (each row's change holds the columns added by the same statement too)
    END IF;
  END IF;
  -- Columns added now whose values PostgreSQL wrote into every row, one by one (a volatile
  -- default such as nextval() or random(), an identity, a stored generated column), rather than
  -- kept once as a fill (column-additions-sql.ts): each row's change is recorded, as an update
  -- from the row without them, so that history has the values the rows got.
  SELECT array_agg(a.attname::text) INTO filled
    FROM pg_attribute a
   WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND NOT a.atthasmissing
     AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(before -> 'columns') c WHERE c ->> 'name' = a.attname)
     AND NOT EXISTS (SELECT 1 FROM jsonb_each_text(coalesce(def -> 'renamed', '{}')) m WHERE m.value = a.attname)
     AND (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '');
  IF filled IS NULL THEN RETURN; END IF;
  EXECUTE format(
    'INSERT INTO strata.working_changes (relid, rel, op, row_key, old_row, new_row)
     SELECT %s, %L, ''U'', %s, to_jsonb(t.*) - %L::text[], to_jsonb(t.*) FROM %s t',
    tbl, v_rel, coalesce(strata.key_expression(keys, 't'), 'NULL::jsonb'), filled,
    strata.own_rows(tbl::regclass));
END
$fn$;

-- Client DDL: new tables are captured (with the rows a CREATE TABLE AS wrote), and table DDL is
-- part of the working set; the table's history surface is made again after DDL changed it.
CREATE OR REPLACE FUNCTION strata.on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  c record;
  v_rel text;
  v_schema text;
  v_table text;
BEGIN
  IF strata.internal_writer() THEN RETURN; END IF;
  FOR c IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    -- RENAME COLUMN reports the column ('table column', objid the table's oid, objsubid the
    -- column's number), not the table.
    CONTINUE WHEN c.object_type NOT IN ('table', 'table column') OR c.in_extension
      OR c.schema_name IN ('strata', 'dolt', 'pg_catalog', 'information_schema')
      OR (SELECT relpersistence = 't' FROM pg_class WHERE oid = c.objid);
    IF (SELECT relispartition FROM pg_class WHERE oid = c.objid) THEN
      -- A partition is no table of its own: its rows are its tree's root's. A new one captures
      -- into the root's history; ATTACH or DETACH on it moves tables into or out of the tree.
      IF strata.replicating() OR c.object_type <> 'table' THEN CONTINUE; END IF;
      IF c.command_tag = 'CREATE TABLE' THEN
        -- Empty, and the only member that changed (the rest of the tree is not read again).
        PERFORM strata.put_capture_triggers(c.objid::regclass, pg_partition_root(c.objid));
      ELSIF strata.capture_partition_tree(c.objid::regclass, true) THEN
        PERFORM strata.record_altered(pg_partition_root(c.objid));
      END IF;
      CONTINUE;
    END IF;
    SELECT n.nspname, k.relname INTO v_schema, v_table
      FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace WHERE k.oid = c.objid;
    v_rel := v_schema || '.' || v_table;
    IF c.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') THEN
      IF strata.replicating() THEN CONTINUE; END IF;
      PERFORM strata.record_new_table(c.objid::regclass);
    ELSIF c.command_tag = 'ALTER TABLE' THEN
      IF NOT strata.replicating() AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = c.objid AND tgname = 'strata_capture_update') THEN
        PERFORM strata.record_altered(c.objid);
        IF pg_partition_root(c.objid) IS NOT NULL THEN
          PERFORM strata.capture_partition_tree(c.objid::regclass, true);
        ELSE
          PERFORM strata.attach_capture(c.objid::regclass);
        END IF;
      END IF;
      IF EXISTS (SELECT 1 FROM strata.table_surfaces s WHERE s.rel = v_rel) THEN
        PERFORM strata.ensure_table_surface(v_schema, v_table);
      END IF;
    END IF;
  END LOOP;
END
$fn$;

-- Where a table's history starts, if it holds every row the table has had (NULL if not): the
-- table entered history by a recorded CREATE TABLE under its name (committed, with its table id,
-- or in this working set), and since then has had no snapshot base, no other name, and no DROP
-- TABLE (an ATTACH PARTITION records one). Changes after the commit returned are all the table's.
CREATE OR REPLACE FUNCTION strata.complete_history_start(tbl oid, p_rel text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  v_tid text := (SELECT tid FROM strata.table_ids WHERE relid = tbl);
  created bigint; -- its CREATE TABLE in the working set
  lo bigint;
BEGIN
  IF v_tid IS NULL THEN RETURN NULL; END IF;
  SELECT id INTO created FROM strata.working_schema_changes
   WHERE relid = tbl AND kind = 'CREATE TABLE' AND rel = p_rel ORDER BY id DESC LIMIT 1;
  IF created IS NOT NULL THEN
    lo := 9223372036854775806; -- the working set's changes only
  ELSE
    SELECT commit_seq - 1 INTO lo FROM strata.schema_changes
     WHERE rel = p_rel AND ddl LIKE 'CREATE TABLE %' AND definition->>'tid' = v_tid
     ORDER BY commit_seq DESC LIMIT 1;
    IF lo IS NULL
       OR EXISTS (SELECT 1 FROM strata.schema_changes WHERE commit_seq > lo
                    AND ((rel = p_rel AND definition ? 'dropped') OR (definition->>'tid' = v_tid AND rel <> p_rel)))
       OR EXISTS (SELECT 1 FROM strata.snapshot_bases WHERE rel = p_rel AND commit_seq > lo) THEN
      RETURN NULL;
    END IF;
  END IF;
  IF EXISTS (SELECT 1 FROM strata.working_schema_changes WHERE id > coalesce(created, 0)
               AND ((rel = p_rel AND kind = 'DROP TABLE') OR (relid = tbl AND rel <> p_rel))) THEN
    RETURN NULL;
  END IF;
  RETURN lo;
END
$fn$;

-- A dropped table's rows, recorded as deleted ahead of its DROP TABLE, where history holds them
-- all (strata.complete_history_start). Returns whether they were. The table is gone by now
-- (sql_drop fires after the drop), so its rows are rebuilt from history: each key's last image,
-- or for a table without a key, the images added and not removed.
CREATE OR REPLACE FUNCTION strata.record_dropped_rows(tbl oid, p_rel text) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
  lo bigint := strata.complete_history_start(tbl, p_rel);
BEGIN
  IF lo IS NULL THEN RETURN false; END IF;
  IF NOT EXISTS (SELECT 1 FROM strata.changes_and_working c
                  WHERE c.rel = p_rel AND c.commit_seq > lo AND c.row_key IS NULL) THEN
    INSERT INTO strata.working_changes (relid, rel, op, row_key, old_row)
    SELECT tbl, p_rel, 'D', s.row_key, s.to_row
      FROM strata.key_states(p_rel, lo, 9223372036854775807) s WHERE s.to_row IS NOT NULL;
  ELSE
    INSERT INTO strata.working_changes (relid, rel, op, old_row)
    SELECT tbl, p_rel, 'D', g.j
      FROM (SELECT i.j, -sum(i.w) AS n FROM strata.image_changes(p_rel, lo, 9223372036854775807) i GROUP BY i.j) g
     CROSS JOIN LATERAL generate_series(1, g.n) WHERE g.n > 0;
  END IF;
  RETURN true;
END
$fn$;

-- The rows a partitioned table lost with a dropped partition, recorded as deleted. No trigger sees
-- them go, and as-of reads start from the rows the table has now, so unrecorded they would vanish
-- from every earlier commit too. They are what history says the table holds and it no longer
-- does: found only where history holds every row (strata.complete_history_start), and only if
-- every row the table still has is one history knows (else history and table disagree, and
-- nothing is recorded). Returns whether they were recorded. Reads the table and its history once.
CREATE OR REPLACE FUNCTION strata.record_vanished_rows(root regclass) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
  v_rel text := strata.rel_of(root);
  lo bigint := strata.complete_history_start(root, v_rel);
  key_columns text[] := strata.primary_key_columns(root);
  agrees boolean;
BEGIN
  IF lo IS NULL THEN RETURN false; END IF;
  IF key_columns IS NOT NULL AND NOT EXISTS (SELECT 1 FROM strata.changes_and_working c
                                              WHERE c.rel = v_rel AND c.commit_seq > lo AND c.row_key IS NULL) THEN
    EXECUTE format(
      'WITH h AS MATERIALIZED (SELECT row_key, to_row FROM strata.key_states($1, $2, 9223372036854775807) WHERE to_row IS NOT NULL),
            t AS MATERIALIZED (SELECT %s AS k FROM %s t),
            unknown AS (SELECT 1 FROM t WHERE NOT EXISTS (SELECT 1 FROM h WHERE h.row_key = t.k) LIMIT 1),
            gone AS (INSERT INTO strata.working_changes (relid, rel, op, row_key, old_row)
                     SELECT $3, $1, ''D'', h.row_key, h.to_row FROM h
                      WHERE NOT EXISTS (SELECT 1 FROM unknown) AND NOT EXISTS (SELECT 1 FROM t WHERE t.k = h.row_key))
       SELECT NOT EXISTS (SELECT 1 FROM unknown)',
      strata.key_expression(key_columns, 't'), root)
      INTO agrees USING v_rel, lo, root::oid;
  ELSE
    -- Without a key, rows are images: history's count of each against the table's.
    EXECUTE format(
      'WITH g AS MATERIALIZED (
              SELECT x.j, sum(x.n) AS n FROM (
                SELECT i.j, -i.w AS n FROM strata.image_changes($1, $2, 9223372036854775807) i
                UNION ALL SELECT to_jsonb(t), -1 FROM %s t) x GROUP BY x.j),
            gone AS (INSERT INTO strata.working_changes (relid, rel, op, old_row)
                     SELECT $3, $1, ''D'', g.j FROM g CROSS JOIN LATERAL generate_series(1, g.n)
                      WHERE g.n > 0 AND NOT EXISTS (SELECT 1 FROM g WHERE g.n < 0))
       SELECT NOT EXISTS (SELECT 1 FROM g WHERE g.n < 0)',
      root)
      INTO agrees USING v_rel, lo, root::oid;
  END IF;
  RETURN agrees;
END
$fn$;

-- A dropped table whose rows at the drop are in history keeps its surface (dolt_history_<t>,
-- dolt_diff_<t>, AS OF), made from the columns it had: those of its surface's signature \`sig\`,
-- taken before the drop.
CREATE OR REPLACE FUNCTION strata.keep_dropped_surface(p_schema text, p_table text, sig text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  IF sig IS NULL OR sig NOT LIKE '{%' THEN RETURN; END IF;
  UPDATE strata.table_surfaces
     SET dropped_columns = jsonb_build_object('names', sig::jsonb->'names', 'types', sig::jsonb->'types')
   WHERE rel = p_schema || '.' || p_table;
  PERFORM strata.ensure_table_surface(p_schema, p_table);
END
$fn$;

CREATE OR REPLACE FUNCTION strata.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  d record;
  v_rel text;
  sig text;
  recorded boolean;
BEGIN
  -- (Strata's own drops, dolt_reset --hard's and a pull's, record nothing here.)
  IF NOT strata.internal_writer() THEN
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() o
              WHERE o.object_type = 'table' AND o.original AND NOT o.is_temporary
                AND o.schema_name NOT IN ('strata', 'dolt')
                AND NOT EXISTS (SELECT 1 FROM strata.capture_members m WHERE m.relid = o.objid) LOOP
      v_rel := d.schema_name || '.' || d.object_name;
      sig := (SELECT signature FROM strata.table_surfaces WHERE rel = v_rel);
      recorded := NOT strata.replicating() AND strata.record_dropped_rows(d.objid, v_rel);
      PERFORM strata.record_table_gone(d.objid, d.schema_name, d.object_name, d.object_identity);
      IF recorded THEN
        -- Said in the drop's definition, so that a clone keeps the table's surface too.
        UPDATE strata.working_schema_changes SET definition = '{"dropped": true, "rows_recorded": true}'
         WHERE id = (SELECT max(id) FROM strata.working_schema_changes WHERE relid = d.objid AND kind = 'DROP TABLE');
        PERFORM strata.keep_dropped_surface(d.schema_name, d.object_name, sig);
      END IF;
    END LOOP;
    -- A partition is no table of its own: dropping one (alone, or inside a dropped partitioned
    -- partition) is a change of its tree's root, which loses the rows it held. (A root dropped as
    -- well was done above, with all its rows.)
    IF NOT strata.replicating() THEN
      FOR d IN SELECT m.root::regclass AS root,
                      coalesce(string_agg(o.object_identity, ', ' ORDER BY o.object_identity) FILTER (WHERE o.original),
                               string_agg(o.object_identity, ', ' ORDER BY o.object_identity)) AS named,
                      string_agg(format('ALTER TABLE %s DETACH PARTITION %s;', m.parent::regclass, o.object_identity), ' ' ORDER BY o.object_identity)
                        FILTER (WHERE o.original AND EXISTS (SELECT 1 FROM pg_class p WHERE p.oid = m.parent)) AS detach
                 FROM pg_event_trigger_dropped_objects() o JOIN strata.capture_members m ON m.relid = o.objid
                WHERE o.object_type = 'table' AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = m.root)
                GROUP BY m.root LOOP
        IF NOT strata.record_vanished_rows(d.root) THEN
          RAISE EXCEPTION 'cannot drop partition % of %: the rows it holds would leave %''s history unrecorded', d.named, d.root, d.root
            USING ERRCODE = '55000',
                  DETAIL = format('%s''s history does not hold every row the table has (it was copied by a snapshot or a shallow clone, or renamed, since it was created; or rows were written with its capture triggers off), so the rows the partition takes with it cannot be told and recorded as deleted, and %s AS OF an earlier commit would lose them too', d.root, d.root),
                  HINT = format('detach it from its partitioned table first, which records its rows leaving %s, then drop it: %s',
                                d.root, coalesce(d.detach, format('ALTER TABLE <its partitioned table> DETACH PARTITION %s;', d.named)));
        END IF;
        PERFORM strata.record_altered(d.root);
      END LOOP;
    END IF;
  END IF;
  DELETE FROM strata.capture_members m
   USING pg_event_trigger_dropped_objects() o WHERE o.object_type = 'table' AND m.relid = o.objid;
END
$fn$;

-- Capture as this version does it: partitions written to directly, rows moved between
-- partitions, inheritance parents' deletes (before 2026-11-24 none of these were captured right).
DO $do$
BEGIN
  DELETE FROM strata.capture_members;
  IF NOT strata.replicating() THEN
    PERFORM strata.capture_partition_tree(c.oid::regclass, false)
       FROM pg_class c WHERE c.relkind = 'p' AND NOT c.relispartition AND strata.capture_root_of(c.oid) = c.oid;
    PERFORM strata.attach_capture(i.inhrelid::regclass)
       FROM pg_inherits i WHERE strata.capture_root_of(i.inhrelid) = i.inhrelid;
  END IF;
END
$do$;

DO $do$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'strata_ddl_end') THEN
    CREATE EVENT TRIGGER strata_ddl_end ON ddl_command_end EXECUTE FUNCTION strata.on_ddl_end();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'strata_sql_drop') THEN
    CREATE EVENT TRIGGER strata_sql_drop ON sql_drop EXECUTE FUNCTION strata.on_sql_drop();
  END IF;
END
$do$;

-- Dolt's base32 of bytes (the alphabet commits/hash.ts uses).
CREATE OR REPLACE FUNCTION strata.base32(bytes bytea) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
  alphabet constant text := '0123456789abcdefghijklmnopqrstuv';
  out text := '';
  buffer bigint := 0;
  bits int := 0;
  i int;
BEGIN
  FOR i IN 0 .. length(bytes) - 1 LOOP
    buffer := (buffer << 8) | get_byte(bytes, i);
    bits := bits + 8;
    WHILE bits >= 5 LOOP
      out := out || substr(alphabet, ((buffer >> (bits - 5)) & 31)::int + 1, 1);
      bits := bits - 5;
    END LOOP;
    buffer := buffer & ((1::bigint << bits) - 1);
  END LOOP;
  IF bits > 0 THEN out := out || substr(alphabet, ((buffer << (5 - bits)) & 31)::int + 1, 1); END IF;
  RETURN out;
END
$fn$;

-- Commit the staged working set (everything with stage_all; new tables too with stage_new).
CREATE OR REPLACE FUNCTION strata.commit_working(message text, committer text, email text,
                                                 stage_all boolean, stage_new boolean, allow_empty boolean)
RETURNS text
-- No JIT: after a large commit the working set's dead rows can make its small statements look
-- costly enough to compile (~100 ms a commit) until autovacuum catches up.
LANGUAGE plpgsql SET jit = off AS $fn$
DECLARE
  v_seq bigint;
  parent text;
  at timestamptz := clock_timestamp();
  canonical text;
  v_hash text;
  r record;
BEGIN
  IF strata.replicating() THEN
    RAISE EXCEPTION 'this database replicates from upstream: its commits are the primary''s transactions'
      USING ERRCODE = '25006', HINT = 'make commits in a database that does not replicate (CREATE DATABASE through Strata)';
  END IF;
  -- One commit at a time per database: each commit's parent is the one before.
  PERFORM pg_advisory_xact_lock(hashtext('strata.commit'));
  IF stage_all THEN
    UPDATE strata.working_schema_changes SET staged = true
     WHERE NOT staged AND (stage_new OR kind <> 'CREATE TABLE');
    UPDATE strata.working_changes w SET staged = true
     WHERE NOT w.staged AND (stage_new OR NOT EXISTS (
       SELECT 1 FROM strata.working_schema_changes s WHERE s.relid = w.relid AND s.kind = 'CREATE TABLE' AND NOT s.staged));
  END IF;
  IF NOT allow_empty AND NOT EXISTS (SELECT 1 FROM strata.working_changes WHERE staged)
     AND NOT EXISTS (SELECT 1 FROM strata.working_schema_changes WHERE staged) THEN
    RAISE EXCEPTION 'nothing to commit'
      USING ERRCODE = '55000',
            HINT = CASE WHEN EXISTS (SELECT 1 FROM strata.working_changes) OR EXISTS (SELECT 1 FROM strata.working_schema_changes)
                        THEN 'stage changes with dolt_add(''table'') or dolt_add(''.''), or commit with -a (changed tables) or -A (new tables too)'
                        ELSE 'no changes since the last commit; dolt_commit(''--allow-empty'', ''-m'', ...) makes an empty commit' END;
  END IF;
  SELECT seq, hash INTO v_seq, parent FROM strata.commits ORDER BY seq DESC LIMIT 1;
  v_seq := coalesce(v_seq, 0) + 1;
  -- The canonical text's header, then each change's line by its own digest (in order), so that a
  -- large commit is hashed without building its whole text in memory.
  canonical := format(E'strata sql commit v2\nparent %s\ncommitter %s <%s>\ndate %s\nmessage %s\n',
                      coalesce(parent, '-'), committer, email,
                      to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), message);
  v_hash := strata.base32(substring(sha256(convert_to(canonical, 'UTF8') || coalesce((
    SELECT string_agg(sha256(convert_to(x.line, 'UTF8')), ''::bytea ORDER BY x.id) FROM (
      SELECT id, format('schema %s %s', rel, ddl) AS line FROM strata.working_schema_changes WHERE staged
      UNION ALL
      SELECT id, format('row %s %s %s %s %s %s', rel, op, row_key, old_key, old_row, new_row)
        FROM strata.working_changes WHERE staged) x), ''::bytea)) FROM 1 FOR 20));
  INSERT INTO strata.commits (seq, hash, parent_hash, committer, email, date, message)
  VALUES (v_seq, v_hash, parent, committer, email, at, message);
  -- Rows and schema changes share the commit's ordinals, in the order they happened.
  WITH ordered AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS ord FROM (
      SELECT id FROM strata.working_schema_changes WHERE staged UNION ALL
      SELECT id FROM strata.working_changes WHERE staged) ids
  ), schema_rows AS (
    INSERT INTO strata.schema_changes (commit_seq, ord, rel, ddl, definition)
    SELECT v_seq, o.ord, s.rel, s.ddl,
           CASE WHEN s.kind = 'DROP TABLE' THEN coalesce(s.definition, '{"dropped": true}'::jsonb)
                ELSE coalesce(s.definition, strata.table_definition(s.relid)) END
      FROM strata.working_schema_changes s JOIN ordered o USING (id) WHERE s.staged
  )
  INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_key, old_row, new_row)
  SELECT v_seq, o.ord, w.rel, w.op, w.row_key, w.old_key, w.old_row, w.new_row
    FROM strata.working_changes w JOIN ordered o USING (id) WHERE w.staged;
  FOR r IN SELECT DISTINCT w.relid FROM strata.working_changes w WHERE w.staged
           UNION SELECT s.relid FROM strata.working_schema_changes s WHERE s.staged LOOP
    -- (Not a table that became a partition: its rows are its root's.)
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = r.relid AND NOT relispartition) THEN
      PERFORM strata.ensure_table_surface(
        (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = r.relid),
        (SELECT relname FROM pg_class WHERE oid = r.relid),
        coalesce(strata.primary_key_columns(r.relid), '{}'));
    END IF;
  END LOOP;
  DELETE FROM strata.working_changes WHERE staged;
  DELETE FROM strata.working_schema_changes WHERE staged;
  RETURN v_hash;
END
$fn$;

-- dolt_commit('-m', 'message'), with -a / -A / --all (stage first), --allow-empty, --author.
CREATE OR REPLACE FUNCTION dolt.dolt_commit(VARIADIC args text[]) RETURNS text[]
LANGUAGE plpgsql AS $fn$
DECLARE
  i int := 1;
  j int;
  a text;
  flag text;
  message text;
  author text;
  name text := session_user;
  email text := session_user || '@localhost';
  stage_all boolean := false;
  stage_new boolean := false;
  allow_empty boolean := false;
  usage constant text := 'dolt_commit(''-m'', ''message'') commits what dolt_add staged; -a stages changed tables first, -A new tables too; also --allow-empty, --author ''Name <email>''';
BEGIN
  WHILE i <= coalesce(cardinality(args), 0) LOOP
    a := args[i];
    IF a = '--allow-empty' THEN allow_empty := true;
    ELSIF a = '--all' THEN stage_all := true; stage_new := true;
    ELSIF a IN ('-m', '--message') THEN i := i + 1; message := args[i];
    ELSIF a LIKE '--message=%' THEN message := substr(a, 11);
    ELSIF a = '--author' THEN i := i + 1; author := args[i];
    ELSIF a LIKE '--author=%' THEN author := substr(a, 10);
    ELSIF a ~ '^-[A-Za-z]+$' THEN
      FOR j IN 2 .. length(a) LOOP
        flag := substr(a, j, 1);
        IF flag = 'a' THEN stage_all := true;
        ELSIF flag = 'A' THEN stage_all := true; stage_new := true;
        ELSIF flag = 'm' AND j = length(a) THEN i := i + 1; message := args[i];
        ELSE
          RAISE EXCEPTION 'dolt_commit: unknown option -% in "%"', flag, a USING ERRCODE = '22023', HINT = usage;
        END IF;
      END LOOP;
    ELSE
      RAISE EXCEPTION 'dolt_commit: unexpected argument "%"', a USING ERRCODE = '22023', HINT = usage;
    END IF;
    i := i + 1;
  END LOOP;
  IF message IS NULL OR btrim(message) = '' THEN
    RAISE EXCEPTION 'dolt_commit needs a message' USING ERRCODE = '22023', HINT = usage;
  END IF;
  IF author IS NOT NULL THEN
    IF author !~ '^[^<>]+<[^<>]+>\\s*$' THEN
      RAISE EXCEPTION 'dolt_commit: --author must be "Name <email>", got "%"', author USING ERRCODE = '22023';
    END IF;
    name := btrim(split_part(author, '<', 1));
    email := btrim(split_part(split_part(author, '<', 2), '>', 1));
  END IF;
  RETURN ARRAY[strata.commit_working(message, name, email, stage_all, stage_new, allow_empty)];
END
$fn$;

-- dolt_add('table', ...) or dolt_add('.') / ('-A'): stage those tables' working changes.
CREATE OR REPLACE FUNCTION dolt.dolt_add(VARIADIC tables text[]) RETURNS text[]
LANGUAGE plpgsql AS $fn$
DECLARE
  t text;
  ids oid[] := '{}';
  found_id oid;
BEGIN
  IF '.' = ANY (tables) OR '-A' = ANY (tables) OR '--all' = ANY (tables) THEN
    UPDATE strata.working_changes SET staged = true WHERE NOT staged;
    UPDATE strata.working_schema_changes SET staged = true WHERE NOT staged;
    RETURN ARRAY['0'];
  END IF;
  FOREACH t IN ARRAY tables LOOP
    found_id := to_regclass(t);
    IF found_id IS NULL THEN
      -- A table dropped in the working set is staged by its name.
      SELECT relid INTO found_id FROM strata.working_schema_changes
       WHERE kind = 'DROP TABLE' AND (rel = t OR rel = 'public.' || t) ORDER BY id DESC LIMIT 1;
    END IF;
    IF found_id IS NULL THEN
      RAISE EXCEPTION 'dolt_add: table "%" does not exist', t USING ERRCODE = '42P01', HINT = 'SELECT * FROM dolt_status lists the changed tables';
    END IF;
    ids := ids || found_id;
  END LOOP;
  UPDATE strata.working_changes SET staged = true WHERE NOT staged AND relid = ANY (ids);
  UPDATE strata.working_schema_changes SET staged = true WHERE NOT staged AND relid = ANY (ids);
  RETURN ARRAY['0'];
END
$fn$;

-- dolt_reset() / ('--soft') unstages; ('table', ...) unstages those; ('--hard') undoes the whole
-- working set: rows back as they were at the last commit, tables it created dropped.
CREATE OR REPLACE FUNCTION dolt.dolt_reset(VARIADIC args text[] DEFAULT '{}') RETURNS text[]
LANGUAGE plpgsql AS $fn$
DECLARE
  c record;
  tbl regclass;
  ids oid[] := '{}';
  t text;
BEGIN
  IF '--hard' = ANY (args) THEN
    SELECT * INTO c FROM strata.working_schema_changes WHERE kind <> 'CREATE TABLE' ORDER BY id LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'dolt_reset --hard cannot undo "%"', c.ddl
        USING ERRCODE = '0A000', HINT = 'undo that schema change by hand (the rows are restored by dolt_reset --hard afterwards), or commit it';
    END IF;
    -- Strata's own writes: the capture triggers let them through.
    PERFORM set_config('strata.applying', 'on', true);
    FOR c IN SELECT * FROM strata.working_changes ORDER BY id DESC LOOP
      tbl := c.relid::regclass;
      IF c.op IN ('I', 'U') THEN
        EXECUTE strata.delete_one_image_sql(tbl) USING c.new_row;
      END IF;
      IF c.op IN ('U', 'D', 'T') THEN
        EXECUTE format('INSERT INTO %s SELECT (jsonb_populate_record(NULL::%s, $1)).*', tbl, tbl) USING c.old_row;
      END IF;
    END LOOP;
    FOR c IN SELECT DISTINCT relid FROM strata.working_schema_changes WHERE kind = 'CREATE TABLE' LOOP
      IF EXISTS (SELECT 1 FROM pg_class WHERE oid = c.relid) THEN
        EXECUTE format('DROP TABLE %s', c.relid::regclass);
      END IF;
    END LOOP;
    PERFORM set_config('strata.applying', 'off', true);
    DELETE FROM strata.working_changes;
    DELETE FROM strata.working_schema_changes;
    RETURN ARRAY['0'];
  END IF;
  FOREACH t IN ARRAY args LOOP
    CONTINUE WHEN t = '--soft';
    tbl := to_regclass(t);
    IF tbl IS NULL THEN
      RAISE EXCEPTION 'dolt_reset: table "%" does not exist', t USING ERRCODE = '42P01';
    END IF;
    ids := ids || tbl::oid;
  END LOOP;
  UPDATE strata.working_changes SET staged = false WHERE staged AND (cardinality(ids) = 0 OR relid = ANY (ids));
  UPDATE strata.working_schema_changes SET staged = false WHERE staged AND (cardinality(ids) = 0 OR relid = ANY (ids));
  RETURN ARRAY['0'];
END
$fn$;

-- With dolt_transaction_commit on, COMMIT of a transaction that changed the working set commits
-- it (deferred to commit time; the first of the transaction's deferred firings does the work).
CREATE OR REPLACE FUNCTION strata.commit_on_transaction_end() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  tables text;
BEGIN
  IF dolt.setting('dolt_transaction_commit') IS DISTINCT FROM '1' OR strata.replicating() THEN RETURN NULL; END IF;
  SELECT string_agg(DISTINCT rel, ', ' ORDER BY rel) INTO tables FROM (
    SELECT rel FROM strata.working_changes UNION ALL SELECT rel FROM strata.working_schema_changes) w;
  IF tables IS NULL THEN RETURN NULL; END IF;
  PERFORM strata.commit_working(format('Transaction commit: %s', tables), session_user, session_user || '@localhost',
                                true, true, false);
  RETURN NULL;
END
$fn$;
DO $do$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'strata_commit_on_end' AND tgrelid = 'strata.working_changes'::regclass) THEN
    CREATE CONSTRAINT TRIGGER strata_commit_on_end AFTER INSERT ON strata.working_changes
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION strata.commit_on_transaction_end();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'strata_commit_on_end' AND tgrelid = 'strata.working_schema_changes'::regclass) THEN
    CREATE CONSTRAINT TRIGGER strata_commit_on_end AFTER INSERT ON strata.working_schema_changes
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION strata.commit_on_transaction_end();
  END IF;
END
$do$;

-- What is not committed yet, per table: staged or not; new table, deleted, or modified.
CREATE OR REPLACE VIEW dolt.dolt_status AS
  SELECT CASE WHEN x.rel LIKE 'public.%' THEN substr(x.rel, 8) ELSE x.rel END AS table_name,
         x.staged,
         CASE WHEN bool_or(x.kind = 'DROP TABLE') THEN 'deleted'
              WHEN bool_or(x.kind = 'CREATE TABLE') THEN 'new table'
              ELSE 'modified' END AS status
    FROM (SELECT rel, staged, 'ROWS' AS kind FROM strata.working_changes
          UNION ALL SELECT rel, staged, kind FROM strata.working_schema_changes) x
   GROUP BY x.rel, x.staged;
`;
