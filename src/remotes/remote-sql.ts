// The store-side half of remotes: the remotes a database knows (dolt_remote, dolt_remotes), each
// table's definition as commits record it, and applying commits pulled from a remote.
//
// A commit travels as its history rows (strata.commits, changes, schema_changes, snapshot_bases),
// which is everything a database needs to rebuild the commit's effect:
//
//   schema change ──▶ the table's definition after it (columns, key, indexes; NULL once dropped)
//   row changes   ──▶ per key, the row before the first change and after the last (as the diff
//                     surface computes them): delete the ones that were there, insert the final ones
//   snapshot base ──▶ the table's rows as of that commit, sent beside the commit (COPY data)
//
// Tables are matched by a table id that stays with a table through renames and across databases
// (strata.table_ids: the database where the table was made, and its oid there), so a rename on
// the primary is a rename on the replica, not a new empty table.
//
// Pulled commits are applied by strata.apply_pulled(idx) from the puller's temporary staging tables
// (pull_commits, pull_schema, pull_changes, pull_bases, filled by COPY), one commit at a time, in
// the puller's store transaction: a pull is all or nothing.

export const REMOTE_SQL = `
CREATE TABLE IF NOT EXISTS strata.remotes (
  name text PRIMARY KEY,
  url text NOT NULL,
  added_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- The last head seen on each remote branch (dolt_fetch, dolt_pull, dolt_push).
CREATE TABLE IF NOT EXISTS strata.remote_branches (
  remote text NOT NULL,
  branch text NOT NULL,
  commit_hash text NOT NULL,
  pack text NOT NULL,
  seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (remote, branch)
);
CREATE OR REPLACE VIEW dolt.dolt_remotes AS
  SELECT name, url, jsonb_build_array(format('refs/heads/*:refs/remotes/%s/*', name)) AS fetch_specs,
         '{}'::jsonb AS params
    FROM strata.remotes ORDER BY name;
CREATE OR REPLACE VIEW dolt.dolt_remote_branches AS
  SELECT 'remotes/' || remote || '/' || branch AS name, commit_hash AS hash, seen_at AS latest_seen
    FROM strata.remote_branches ORDER BY remote, branch;

-- Tags: names for commits (wherever a commit is named), pushed and pulled with the branch.
CREATE TABLE IF NOT EXISTS strata.tags (
  name text PRIMARY KEY,
  commit_hash text NOT NULL,
  tagger text NOT NULL,
  email text NOT NULL,
  date timestamptz NOT NULL DEFAULT clock_timestamp(),
  message text NOT NULL DEFAULT ''
);
-- The tags a remote has from this database (pushed or pulled), so a push sends only the others.
CREATE TABLE IF NOT EXISTS strata.remote_tags (
  remote text NOT NULL,
  name text NOT NULL,
  commit_hash text NOT NULL,
  PRIMARY KEY (remote, name)
);
CREATE OR REPLACE VIEW dolt.dolt_tags AS
  SELECT name AS tag_name, commit_hash AS tag_hash, tagger, email, date, message FROM strata.tags ORDER BY name;

-- dolt_tag('name' [, 'commit']) / ('-m', 'message', 'name' [, 'commit']) / ('-d' | '--delete', 'name').
CREATE OR REPLACE FUNCTION dolt.dolt_tag(VARIADIC args text[]) RETURNS text[]
LANGUAGE plpgsql AS $fn$
DECLARE
  i int := 1;
  message text := '';
  positional text[] := '{}';
  deleting boolean := false;
  v_hash text;
  usage constant text := 'dolt_tag(''name'' [, ''commit'']), dolt_tag(''-m'', ''message'', ''name'' [, ''commit'']) or dolt_tag(''-d'', ''name'')';
BEGIN
  WHILE i <= coalesce(cardinality(args), 0) LOOP
    IF args[i] IN ('-m', '--message') THEN i := i + 1; message := coalesce(args[i], '');
    ELSIF args[i] IN ('-d', '--delete') THEN deleting := true;
    ELSIF args[i] LIKE '-%' THEN
      RAISE EXCEPTION 'dolt_tag: unknown option %', args[i] USING ERRCODE = '22023', HINT = usage;
    ELSE positional := positional || args[i];
    END IF;
    i := i + 1;
  END LOOP;
  IF deleting THEN
    IF cardinality(positional) = 0 THEN RAISE EXCEPTION 'dolt_tag -d needs a tag name' USING ERRCODE = '22023', HINT = usage; END IF;
    DELETE FROM strata.tags WHERE name = ANY (positional);
    IF NOT FOUND THEN
      RAISE EXCEPTION 'dolt_tag: no tag named "%"', positional[1] USING ERRCODE = '42704', HINT = 'SELECT * FROM dolt_tags lists them';
    END IF;
    RETURN ARRAY['0'];
  END IF;
  IF cardinality(positional) NOT IN (1, 2) THEN
    RAISE EXCEPTION 'dolt_tag: expected a tag name and optionally a commit' USING ERRCODE = '22023', HINT = usage;
  END IF;
  IF positional[1] !~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$' OR position('..' in positional[1]) > 0 OR upper(positional[1]) IN ('HEAD', 'WORKING', 'STAGED') THEN
    RAISE EXCEPTION 'dolt_tag: "%" is not a valid tag name', positional[1]
      USING ERRCODE = '22023', HINT = 'letters, digits, _, . and -, not starting with . or - (and not HEAD, WORKING or STAGED)';
  END IF;
  -- A remote stores each tag under a file name of its own (src/remotes/storage.ts's limit).
  IF octet_length(positional[1]) > 200 THEN
    RAISE EXCEPTION 'dolt_tag: a tag name of % bytes is too long to push to a remote', octet_length(positional[1])
      USING ERRCODE = '42622', HINT = 'use a tag name of at most 200 bytes';
  END IF;
  IF EXISTS (SELECT 1 FROM strata.tags WHERE name = positional[1]) THEN
    RAISE EXCEPTION 'dolt_tag: tag "%" already exists', positional[1]
      USING ERRCODE = '42710', HINT = format('delete it first: SELECT dolt_tag(''-d'', %L)', positional[1]);
  END IF;
  v_hash := dolt.commit_hash(coalesce(positional[2], 'HEAD'));
  INSERT INTO strata.tags (name, commit_hash, tagger, email, message)
  VALUES (positional[1], v_hash, session_user, session_user || '@localhost', message);
  RETURN ARRAY['0'];
END
$fn$;

-- dolt_remote('add', name, url) / ('remove' | 'rm', name).
CREATE OR REPLACE FUNCTION dolt.dolt_remote(VARIADIC args text[]) RETURNS text[]
LANGUAGE plpgsql AS $fn$
DECLARE
  usage constant text := 'dolt_remote(''add'', ''name'', ''file:///path'' | ''s3://bucket/prefix'' | ''http(s)://...'') or dolt_remote(''remove'', ''name'')';
BEGIN
  IF args[1] = 'add' AND cardinality(args) = 3 THEN
    IF args[2] !~ '^[A-Za-z0-9_][A-Za-z0-9_.-]*$' THEN
      RAISE EXCEPTION 'dolt_remote: "%" is not a valid remote name', args[2]
        USING ERRCODE = '22023', HINT = 'letters, digits, _, . and -, not starting with . or -';
    END IF;
    IF args[3] !~ '^(file:///|s3://[^/]+|https?://[^/]+)' THEN
      RAISE EXCEPTION 'dolt_remote: remote URL "%" is not supported', args[3]
        USING ERRCODE = '22023', HINT = 'use file:///absolute/path (a directory), s3://bucket/prefix or http(s)://host:port/...';
    END IF;
    IF EXISTS (SELECT 1 FROM strata.remotes WHERE name = args[2]) THEN
      RAISE EXCEPTION 'dolt_remote: remote "%" already exists', args[2]
        USING ERRCODE = '42710', HINT = format('remove it first: SELECT dolt_remote(''remove'', %L)', args[2]);
    END IF;
    INSERT INTO strata.remotes (name, url) VALUES (args[2], args[3]);
  ELSIF args[1] IN ('remove', 'rm') AND cardinality(args) = 2 THEN
    DELETE FROM strata.remotes WHERE name = args[2];
    IF NOT FOUND THEN
      RAISE EXCEPTION 'dolt_remote: no remote named "%"', args[2]
        USING ERRCODE = '42704', HINT = 'SELECT * FROM dolt_remotes lists them';
    END IF;
    DELETE FROM strata.remote_branches WHERE remote = args[2];
    DELETE FROM strata.remote_tags WHERE remote = args[2];
  ELSE
    RAISE EXCEPTION 'dolt_remote: unexpected arguments %', args USING ERRCODE = '22023', HINT = usage;
  END IF;
  RETURN ARRAY['0'];
END
$fn$;

-- Network operations need Strata itself: through the front door they never reach these.
CREATE OR REPLACE FUNCTION strata.needs_front_door(fn text) RETURNS text[]
LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION '% talks to a remote, which only Strata can do', fn
    USING ERRCODE = '0A000', HINT = 'connect to Strata''s listener (the front door), not to the store directly';
END
$fn$;
CREATE OR REPLACE FUNCTION dolt.dolt_push(VARIADIC args text[] DEFAULT '{}') RETURNS text[]
  LANGUAGE sql AS $$ SELECT strata.needs_front_door('dolt_push') $$;
CREATE OR REPLACE FUNCTION dolt.dolt_pull(VARIADIC args text[] DEFAULT '{}') RETURNS text[]
  LANGUAGE sql AS $$ SELECT strata.needs_front_door('dolt_pull') $$;
CREATE OR REPLACE FUNCTION dolt.dolt_fetch(VARIADIC args text[] DEFAULT '{}') RETURNS text[]
  LANGUAGE sql AS $$ SELECT strata.needs_front_door('dolt_fetch') $$;
CREATE OR REPLACE FUNCTION dolt.dolt_clone(VARIADIC args text[] DEFAULT '{}') RETURNS text[]
  LANGUAGE sql AS $$ SELECT strata.needs_front_door('dolt_clone') $$;

-- Table identity across renames and databases.
CREATE TABLE IF NOT EXISTS strata.database_identity (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  id text NOT NULL
);
CREATE TABLE IF NOT EXISTS strata.table_ids (
  relid oid PRIMARY KEY,
  tid text NOT NULL UNIQUE
);
CREATE OR REPLACE FUNCTION strata.table_id(tbl oid) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
  v text;
BEGIN
  SELECT tid INTO v FROM strata.table_ids WHERE relid = tbl;
  IF FOUND THEN RETURN v; END IF;
  -- Made on first use, not at install: databases made later are copies of template1.
  INSERT INTO strata.database_identity (id) VALUES (replace(gen_random_uuid()::text, '-', ''))
    ON CONFLICT (singleton) DO NOTHING;
  v := (SELECT id FROM strata.database_identity) || ':' || tbl;
  -- The same value whoever makes it first: a racing writer's row is as good as this one.
  INSERT INTO strata.table_ids (relid, tid) VALUES (tbl, v) ON CONFLICT DO NOTHING;
  RETURN v;
END
$fn$;

-- A table's definition: what another database needs to make the same table (NULL: no table).
-- Defaults that draw from a sequence are left out (the sequence is this database's).
CREATE OR REPLACE FUNCTION strata.table_definition(tbl oid) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object(
    'tid', strata.table_id(c.oid),
    'schema', n.nspname,
    'name', c.relname,
    'columns', (SELECT jsonb_agg(jsonb_build_object(
                  'name', a.attname,
                  'type', format_type(a.atttypid, a.atttypmod),
                  'not_null', a.attnotnull,
                  'default', CASE WHEN pg_get_expr(d.adbin, d.adrelid) NOT LIKE 'nextval(%' THEN pg_get_expr(d.adbin, d.adrelid) END)
                  ORDER BY a.attnum)
                  FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
    'primary_key', to_jsonb(coalesce(strata.primary_key_columns(c.oid), '{}')),
    'indexes', coalesce((SELECT jsonb_agg(jsonb_build_object('name', ic.relname, 'def', pg_get_indexdef(i.indexrelid)) ORDER BY ic.relname)
                  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid = c.oid AND NOT i.indisprimary), '[]'::jsonb))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = tbl AND c.relkind IN ('r', 'p')
$$;

-- Every schema change records the table's definition after it ({"dropped": true} once dropped;
-- NULL when it changed no table's definition, e.g. DROP INDEX), written by its writer.
ALTER TABLE strata.schema_changes ADD COLUMN IF NOT EXISTS definition jsonb;

-- 'schema.table' as history names tables (unquoted) to the table, if there is one.
CREATE OR REPLACE FUNCTION strata.regclass_of(p_rel text) RETURNS regclass
LANGUAGE sql STABLE AS $$
  SELECT to_regclass(format('%I.%I', split_part(p_rel, '.', 1), substr(p_rel, length(split_part(p_rel, '.', 1)) + 2)))
$$;

-- A table that enters history other than by a schema change (copied by an initial snapshot or as
-- it joined the publication, or made by a pull's 'ensure') has its definition at that commit
-- recorded here: a push that sends the table's first rows sends this definition with them, not
-- the table's definition at the time of the push, which later schema changes may have changed.
CREATE TABLE IF NOT EXISTS strata.table_entries (
  rel text NOT NULL,
  commit_seq bigint NOT NULL,
  definition jsonb NOT NULL,
  PRIMARY KEY (rel, commit_seq)
);
CREATE OR REPLACE FUNCTION strata.note_table_entry(p_rel text, p_seq bigint, p_definition jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO strata.table_entries (rel, commit_seq, definition)
  SELECT p_rel, p_seq, d FROM (SELECT coalesce(p_definition, strata.table_definition(strata.regclass_of(p_rel))) AS d) x
   WHERE d IS NOT NULL
  ON CONFLICT (rel, commit_seq) DO UPDATE SET definition = excluded.definition
$$;

-- Make (or bring to) the table p_rel as the definition says, or drop it. 'ensure' only
-- makes a table that is missing (a table a pushed commit uses that no commit in the push made).
CREATE OR REPLACE FUNCTION strata.apply_definition(p_rel text, p_kind text, def jsonb) RETURNS void
LANGUAGE plpgsql SET client_min_messages = warning AS $fn$
DECLARE
  v_schema text := split_part(p_rel, '.', 1);
  v_name text := substr(p_rel, length(split_part(p_rel, '.', 1)) + 2);
  tbl regclass;
  cur_schema text;
  cur_name text;
  col jsonb;
  idx jsonb;
  cols text;
  pk text[];
  local_pk text[];
  cur_type text;
  cur_not_null boolean;
  cur_default text;
  r record;
  sig text;
BEGIN
  IF def IS NULL THEN RETURN; END IF;
  IF def ? 'dropped' THEN
    tbl := strata.regclass_of(p_rel);
    IF tbl IS NOT NULL THEN
      sig := (SELECT signature FROM strata.table_surfaces WHERE rel = p_rel);
      DELETE FROM strata.table_ids WHERE relid = tbl;
      PERFORM strata.drop_table_surface(v_schema, v_name);
      EXECUTE format('DROP TABLE %s', tbl);
      -- Its rows at the drop were recorded (deleted by this commit): it keeps its past.
      IF def ? 'rows_recorded' THEN PERFORM strata.keep_dropped_surface(v_schema, v_name, sig); END IF;
    END IF;
    RETURN;
  END IF;
  SELECT i.relid::regclass INTO tbl FROM strata.table_ids i JOIN pg_class c ON c.oid = i.relid WHERE i.tid = def->>'tid';
  IF tbl IS NULL THEN tbl := strata.regclass_of(p_rel); END IF;
  pk := ARRAY(SELECT jsonb_array_elements_text(def->'primary_key'));
  IF tbl IS NULL THEN
    SELECT string_agg(format('%I %s%s%s', c->>'name', c->>'type',
                             CASE WHEN (c->>'not_null')::boolean THEN ' NOT NULL' ELSE '' END,
                             CASE WHEN c->>'default' IS NOT NULL THEN ' DEFAULT ' || (c->>'default') ELSE '' END), ', ')
      INTO cols FROM jsonb_array_elements(def->'columns') c;
    IF cardinality(pk) > 0 THEN
      cols := cols || format(', PRIMARY KEY (%s)', (SELECT string_agg(quote_ident(k), ', ') FROM unnest(pk) k));
    END IF;
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', v_schema);
    EXECUTE format('CREATE TABLE %I.%I (%s)', v_schema, v_name, coalesce(cols, ''));
    tbl := format('%I.%I', v_schema, v_name)::regclass;
    FOR idx IN SELECT * FROM jsonb_array_elements(def->'indexes') LOOP
      EXECUTE strata.index_def_for(idx->>'def', tbl);
    END LOOP;
  ELSIF p_kind <> 'ensure' THEN
    SELECT n.nspname, c.relname INTO cur_schema, cur_name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF cur_schema <> v_schema THEN
      EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', v_schema);
      PERFORM strata.drop_table_surface(cur_schema, cur_name);
      EXECUTE format('ALTER TABLE %s SET SCHEMA %I', tbl, v_schema);
    END IF;
    IF cur_name <> v_name THEN
      PERFORM strata.drop_table_surface(v_schema, cur_name);
      EXECUTE format('ALTER TABLE %s RENAME TO %I', tbl, v_name);
    END IF;
    -- Renamed columns keep their values (column-renames-sql.ts): by way of temporary names, so
    -- that renames made at once (a swap) need no order.
    IF def ? 'renamed' THEN
      FOR r IN SELECT x.key AS old_name, x.o FROM jsonb_each(def->'renamed') WITH ORDINALITY AS x(key, value, o)
                WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = x.key AND NOT a.attisdropped) LOOP
        EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', tbl, r.old_name, 'strata_renaming_' || r.o);
      END LOOP;
      FOR r IN SELECT x.value #>> '{}' AS new_name, x.o FROM jsonb_each(def->'renamed') WITH ORDINALITY AS x(key, value, o)
                WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = 'strata_renaming_' || x.o AND NOT a.attisdropped) LOOP
        EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', tbl, 'strata_renaming_' || r.o, r.new_name);
      END LOOP;
    END IF;
    -- Columns: dropped, added, retyped, NOT NULL and DEFAULT as the definition says.
    FOR r IN SELECT a.attname FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
               AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(def->'columns') c WHERE c->>'name' = a.attname) LOOP
      EXECUTE format('ALTER TABLE %s DROP COLUMN %I CASCADE', tbl, r.attname);
    END LOOP;
    FOR col IN SELECT * FROM jsonb_array_elements(def->'columns') LOOP
      SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
        INTO cur_type, cur_not_null, cur_default
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
       WHERE a.attrelid = tbl AND a.attname = col->>'name' AND NOT a.attisdropped;
      IF NOT FOUND THEN
        -- With its default, as the primary added it: the rows already here get its value.
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s%s', tbl, col->>'name', col->>'type',
                       CASE WHEN col->>'default' IS NOT NULL THEN ' DEFAULT ' || (col->>'default') ELSE '' END);
        cur_not_null := false;
        cur_default := col->>'default';
      ELSIF cur_type <> col->>'type' THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING %I::%s', tbl, col->>'name', col->>'type', col->>'name', col->>'type');
      END IF;
      IF cur_default IS DISTINCT FROM col->>'default' THEN
        EXECUTE CASE WHEN col->>'default' IS NULL THEN format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', tbl, col->>'name')
                     ELSE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', tbl, col->>'name', col->>'default') END;
      END IF;
      IF cur_not_null IS DISTINCT FROM (col->>'not_null')::boolean AND NOT (col->>'name' = ANY (pk)) THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I %s NOT NULL', tbl, col->>'name',
                       CASE WHEN (col->>'not_null')::boolean THEN 'SET' ELSE 'DROP' END);
      END IF;
    END LOOP;
    local_pk := coalesce(strata.primary_key_columns(tbl), '{}');
    IF local_pk IS DISTINCT FROM pk THEN
      FOR r IN SELECT conname FROM pg_constraint WHERE conrelid = tbl AND contype = 'p' LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', tbl, r.conname);
      END LOOP;
      IF cardinality(pk) > 0 THEN
        EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (%s)', tbl, (SELECT string_agg(quote_ident(k), ', ') FROM unnest(pk) k));
      END IF;
    END IF;
    -- Indexes other than the key's: the definition's, by name.
    FOR r IN SELECT ic.relname, ic.oid, (SELECT conname FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = tbl) AS con
               FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = tbl AND NOT i.indisprimary
                AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(def->'indexes') x WHERE x->>'name' = ic.relname) LOOP
      EXECUTE CASE WHEN r.con IS NOT NULL THEN format('ALTER TABLE %s DROP CONSTRAINT %I', tbl, r.con)
                   ELSE format('DROP INDEX %s', r.oid::regclass) END;
    END LOOP;
    FOR idx IN SELECT * FROM jsonb_array_elements(def->'indexes') x
                WHERE NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                                   WHERE i.indrelid = tbl AND ic.relname = x->>'name') LOOP
      EXECUTE strata.index_def_for(idx->>'def', tbl);
    END LOOP;
  END IF;
  PERFORM strata.note_column_names(tbl);
  DELETE FROM strata.table_ids WHERE tid = def->>'tid' AND relid <> tbl;
  INSERT INTO strata.table_ids (relid, tid) VALUES (tbl, def->>'tid')
    ON CONFLICT (relid) DO UPDATE SET tid = excluded.tid;
END
$fn$;

-- An index definition (pg_get_indexdef) aimed at tbl: its "ON <table>" names the table it was
-- read from, which may have had another name there.
CREATE OR REPLACE FUNCTION strata.index_def_for(def text, tbl regclass) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT regexp_replace(def, ' ON (ONLY )?\\S+ USING ', format(' ON %s USING ', tbl))
$$;

-- Apply the row changes of pulled commit p_idx with ordinals in [lo, hi) to the tables.
CREATE OR REPLACE FUNCTION strata.apply_pulled_rows(p_idx int, v_hash text, lo bigint, hi bigint) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
  c record;
  tbl regclass;
  keys text[];
  join_on text;
  expected bigint;
  done bigint;
BEGIN
  FOR r IN SELECT DISTINCT rel FROM pg_temp.pull_changes WHERE idx = p_idx AND ord >= lo AND ord < hi LOOP
    tbl := strata.regclass_of(r.rel);
    IF tbl IS NULL THEN
      RAISE EXCEPTION 'commit % changes table %, which is not in this database', v_hash, r.rel
        USING ERRCODE = '42P01', HINT = 'the database has diverged from the remote: clone it again';
    END IF;
    keys := strata.primary_key_columns(tbl);
    IF keys IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_temp.pull_changes
                                         WHERE idx = p_idx AND rel = r.rel AND ord >= lo AND ord < hi AND row_key IS NULL) THEN
      -- Per key: the row before the first change and after the last (see strata.key_states).
      TRUNCATE pg_temp.pull_net;
      INSERT INTO pg_temp.pull_net (k, from_row, to_row)
      SELECT m.k, (array_agg(m.before ORDER BY m.ord, m.side))[1], (array_agg(m.after ORDER BY m.ord DESC, m.side DESC))[1]
        FROM (
          SELECT ch.ord, 0 AS side, coalesce(ch.old_key, ch.row_key) AS k,
                 CASE WHEN ch.op = 'I' THEN NULL ELSE ch.old_row END AS before,
                 CASE WHEN ch.op = 'I' OR (ch.op = 'U' AND ch.old_key IS NULL) THEN ch.new_row END AS after
            FROM pg_temp.pull_changes ch WHERE ch.idx = p_idx AND ch.rel = r.rel AND ch.ord >= lo AND ch.ord < hi
          UNION ALL
          SELECT ch.ord, 1, ch.row_key, NULL, ch.new_row
            FROM pg_temp.pull_changes ch
           WHERE ch.idx = p_idx AND ch.rel = r.rel AND ch.ord >= lo AND ch.ord < hi AND ch.op = 'U' AND ch.old_key IS NOT NULL
        ) m GROUP BY m.k;
      -- Its real size, so that a few keys are found through the table's key index, not a scan.
      ANALYZE pg_temp.pull_net;
      SELECT string_agg(format('t.%1$I = d.%1$I', k), ' AND ') INTO join_on FROM unnest(keys) k;
      SELECT count(*) INTO expected FROM pg_temp.pull_net WHERE from_row IS NOT NULL;
      EXECUTE format('DELETE FROM %3$s t USING (SELECT (jsonb_populate_record(NULL::%1$s, n.k)).* FROM pg_temp.pull_net n WHERE n.from_row IS NOT NULL) d WHERE %2$s',
                     tbl, join_on, strata.own_rows(tbl));
      GET DIAGNOSTICS done = ROW_COUNT;
      IF done <> expected THEN
        RAISE EXCEPTION 'commit % changes % rows of % that are not in this database', v_hash, expected - done, r.rel
          USING ERRCODE = '55000', HINT = 'the database has diverged from the remote (written to here?): clone it again';
      END IF;
      EXECUTE format('INSERT INTO %1$s SELECT (jsonb_populate_record(NULL::%1$s, n.to_row)).* FROM pg_temp.pull_net n WHERE n.to_row IS NOT NULL', tbl);
    ELSE
      -- No key: rows are images, one at a time in order.
      FOR c IN SELECT * FROM pg_temp.pull_changes WHERE idx = p_idx AND rel = r.rel AND ord >= lo AND ord < hi ORDER BY ord LOOP
        IF c.op IN ('U', 'D', 'T') THEN
          EXECUTE strata.delete_one_image_sql(tbl) USING c.old_row;
          GET DIAGNOSTICS done = ROW_COUNT;
          IF done <> 1 THEN
            RAISE EXCEPTION 'commit % changes a row of % that is not in this database', v_hash, r.rel
              USING ERRCODE = '55000', HINT = 'the database has diverged from the remote (written to here?): clone it again';
          END IF;
        END IF;
        IF c.op IN ('I', 'U') THEN
          EXECUTE format('INSERT INTO %1$s SELECT (jsonb_populate_record(NULL::%1$s, $1)).*', tbl) USING c.new_row;
        END IF;
      END LOOP;
    END IF;
  END LOOP;
END
$fn$;

-- Apply pulled commit p_idx (staged by the puller) on top of this database's head; returns its seq.
CREATE OR REPLACE FUNCTION strata.apply_pulled(p_idx int) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
  c record;
  s record;
  head text;
  v_seq bigint;
  prev bigint := -9223372036854775807;
  r record;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('strata.commit'));
  PERFORM set_config('strata.applying', 'on', true);
  SELECT * INTO c FROM pg_temp.pull_commits WHERE idx = p_idx;
  SELECT seq, hash INTO v_seq, head FROM strata.commits ORDER BY seq DESC LIMIT 1;
  IF c.parent_hash IS DISTINCT FROM head THEN
    RAISE EXCEPTION 'commit % does not follow this database''s head %', c.hash, coalesce(head, '(no commits)')
      USING ERRCODE = '55000', HINT = 'the database has commits the remote lacks: pull is fast-forward only';
  END IF;
  IF EXISTS (SELECT 1 FROM strata.working_changes) OR EXISTS (SELECT 1 FROM strata.working_schema_changes) THEN
    RAISE EXCEPTION 'this database has uncommitted changes' USING ERRCODE = '55000',
      HINT = 'commit them (dolt_commit) or drop them (dolt_reset(''--hard'')) before pulling';
  END IF;
  v_seq := coalesce(v_seq, 0) + 1;
  INSERT INTO strata.commits (seq, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn)
  VALUES (v_seq, c.hash, c.parent_hash, c.committer, c.email, c.date, c.message, c.upstream_xid, c.upstream_commit_lsn, c.upstream_end_lsn);
  -- Schema changes are barriers: the rows before one are applied before it.
  FOR s IN SELECT * FROM pg_temp.pull_schema WHERE idx = p_idx ORDER BY ord LOOP
    PERFORM strata.apply_pulled_rows(p_idx, c.hash, prev, s.ord);
    PERFORM strata.apply_definition(s.rel, s.kind, s.definition);
    prev := s.ord;
  END LOOP;
  PERFORM strata.apply_pulled_rows(p_idx, c.hash, prev, 9223372036854775807);
  INSERT INTO strata.schema_changes (commit_seq, ord, rel, ddl, definition)
  SELECT v_seq, ord, rel, ddl, definition FROM pg_temp.pull_schema WHERE idx = p_idx AND kind = 'schema';
  -- A table the pushing database had entered without a schema change: so it is here too, and
  -- this database's own pushes send the same definition.
  PERFORM strata.note_table_entry(rel, v_seq, definition) FROM pg_temp.pull_schema WHERE idx = p_idx AND kind = 'ensure';
  INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_key, old_row, new_row)
  SELECT v_seq, ord, rel, op, row_key, old_key, old_row, new_row FROM pg_temp.pull_changes WHERE idx = p_idx;
  INSERT INTO strata.snapshot_bases (rel, commit_seq, key_columns)
  SELECT rel, v_seq, key_columns FROM pg_temp.pull_bases WHERE idx = p_idx;
  -- Tables whose shape or key this commit set: their history surface, and capture where clients
  -- write (rows alone change neither).
  FOR r IN SELECT DISTINCT x.rel FROM (
             SELECT rel FROM pg_temp.pull_schema WHERE idx = p_idx UNION SELECT rel FROM pg_temp.pull_bases WHERE idx = p_idx) x LOOP
    IF strata.regclass_of(r.rel) IS NOT NULL THEN
      IF NOT strata.replicating() THEN PERFORM strata.attach_capture(strata.regclass_of(r.rel)); END IF;
      PERFORM strata.ensure_table_surface(split_part(r.rel, '.', 1), substr(r.rel, length(split_part(r.rel, '.', 1)) + 2),
                                          coalesce((SELECT key_columns FROM pg_temp.pull_bases WHERE idx = p_idx AND rel = r.rel),
                                                   strata.history_keys(r.rel, strata.regclass_of(r.rel)), '{}'));
    END IF;
  END LOOP;
  PERFORM set_config('strata.applying', 'off', true);
  RETURN v_seq;
END
$fn$;

-- Load pulled commits p_from..p_to (staged) as history only, without applying them to the tables:
-- a clone's commits up to a snapshot, whose tables then come from the snapshot. Returns how many.
CREATE OR REPLACE FUNCTION strata.load_pulled_history(p_from int, p_to int) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
  head text;
  head_seq bigint;
  first_parent text;
  offs bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('strata.commit'));
  SELECT seq, hash INTO head_seq, head FROM strata.commits ORDER BY seq DESC LIMIT 1;
  SELECT parent_hash INTO first_parent FROM pg_temp.pull_commits WHERE idx = p_from;
  IF first_parent IS DISTINCT FROM head THEN
    RAISE EXCEPTION 'pulled commits do not follow this database''s head %', coalesce(head, '(no commits)')
      USING ERRCODE = '55000', HINT = 'clone into a new database';
  END IF;
  offs := coalesce(head_seq, 0) - p_from + 1;
  INSERT INTO strata.commits (seq, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn)
  SELECT idx + offs, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn
    FROM pg_temp.pull_commits WHERE idx BETWEEN p_from AND p_to;
  INSERT INTO strata.schema_changes (commit_seq, ord, rel, ddl, definition)
  SELECT idx + offs, ord, rel, ddl, definition FROM pg_temp.pull_schema WHERE idx BETWEEN p_from AND p_to AND kind = 'schema';
  PERFORM strata.note_table_entry(rel, idx + offs, definition) FROM pg_temp.pull_schema WHERE idx BETWEEN p_from AND p_to AND kind = 'ensure';
  INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_key, old_row, new_row)
  SELECT idx + offs, ord, rel, op, row_key, old_key, old_row, new_row FROM pg_temp.pull_changes WHERE idx BETWEEN p_from AND p_to;
  INSERT INTO strata.snapshot_bases (rel, commit_seq, key_columns)
  SELECT rel, idx + offs, key_columns FROM pg_temp.pull_bases WHERE idx BETWEEN p_from AND p_to;
  RETURN p_to - p_from + 1;
END
$fn$;

-- A shallow clone's first commit: the snapshot's commit, without its ancestors or their history
-- (its parent_hash still names the parent, which this database does not have).
CREATE OR REPLACE FUNCTION strata.load_shallow_base(p_idx int) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('strata.commit'));
  IF EXISTS (SELECT 1 FROM strata.commits) THEN
    RAISE EXCEPTION 'a shallow clone starts in a database without commits' USING ERRCODE = '55000';
  END IF;
  INSERT INTO strata.commits (seq, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn)
  SELECT 1, hash, parent_hash, committer, email, date, message, upstream_xid, upstream_commit_lsn, upstream_end_lsn
    FROM pg_temp.pull_commits WHERE idx = p_idx;
END
$fn$;

-- A table a shallow clone loaded from the snapshot: its rows at the base commit are a snapshot
-- base (no history rows), as a replica's initial snapshot's are.
CREATE OR REPLACE FUNCTION strata.shallow_base_table(p_rel text) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO strata.snapshot_bases (rel, commit_seq, key_columns)
  VALUES (p_rel, (SELECT max(seq) FROM strata.commits), coalesce(strata.history_keys(p_rel, strata.regclass_of(p_rel)), '{}'))
  ON CONFLICT DO NOTHING;
  SELECT strata.note_table_entry(p_rel, (SELECT max(seq) FROM strata.commits));
$$;

-- After a snapshot's tables are loaded: their history surface, and capture where clients write.
CREATE OR REPLACE FUNCTION strata.finish_snapshot_table(p_rel text) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  tbl regclass := strata.regclass_of(p_rel);
BEGIN
  IF tbl IS NULL THEN RETURN; END IF;
  IF NOT strata.replicating() THEN PERFORM strata.attach_capture(tbl); END IF;
  PERFORM strata.ensure_table_surface(split_part(p_rel, '.', 1), substr(p_rel, length(split_part(p_rel, '.', 1)) + 2),
                                      strata.history_keys(p_rel, tbl));
END
$fn$;
`;

/** The puller's staging tables, made in its store transaction (gone at its end). */
export const PULL_STAGING_SQL = `
CREATE TEMP TABLE pull_commits (idx int PRIMARY KEY, hash text NOT NULL, parent_hash text, committer text NOT NULL,
  email text NOT NULL, date timestamptz NOT NULL, message text NOT NULL, upstream_xid bigint,
  upstream_commit_lsn pg_lsn, upstream_end_lsn pg_lsn) ON COMMIT DROP;
CREATE TEMP TABLE pull_schema (idx int NOT NULL, ord bigint NOT NULL, rel text NOT NULL, ddl text NOT NULL,
  definition jsonb, kind text NOT NULL) ON COMMIT DROP;
CREATE TEMP TABLE pull_changes (idx int NOT NULL, ord int NOT NULL, rel text NOT NULL, op "char" NOT NULL,
  row_key jsonb, old_key jsonb, old_row jsonb, new_row jsonb) ON COMMIT DROP;
CREATE INDEX ON pull_changes (idx, rel, ord);
CREATE TEMP TABLE pull_bases (idx int NOT NULL, rel text NOT NULL, key_columns text[] NOT NULL) ON COMMIT DROP;
CREATE TEMP TABLE pull_net (k jsonb, from_row jsonb, to_row jsonb) ON COMMIT DROP;
`;
