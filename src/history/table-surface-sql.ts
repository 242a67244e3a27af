// The per-table part of the version-control surface, generated in the store itself so that every
// writer of history — the replication apply path and dolt_commit() run by any SQL client — makes
// the same objects. For a table T in schema S:
//
//   S.dolt_history_T            view: every version of every row, with its commit
//   S.dolt_diff_T               view: each commit's changes to T against its parent
//                               (to_<col>, to_commit, to_commit_date, from_<col>, from_commit,
//                               from_commit_date, diff_type added / modified / removed)
//   S.dolt_diff_T(from, to)     function: the same columns between any two commits
//   S.dolt_as_of_T(commit)      function: T's rows as of a commit (the store-side form of
//                               `SELECT ... FROM T AS OF 'commit'`)
//   S.dolt_as_of_T(commit, key columns...)  the row with that key as of a commit (index lookups)
//   S.dolt_blame_T              view: the last commit that touched each row (keyed tables)
//
// All of them are SQL functions that declare their columns (the views select from them), so that
// nothing depends on T's row type: any DDL on T, by the primary or by a client, goes through, and
// the functions are regenerated after it (their signature, kept in strata.table_surfaces, no
// longer matches). Being single SELECTs, they are inlined into the queries that use them, so
// filters reach the indexes. The logic lives in the generic functions of surface-sql.ts; these are
// typed wrappers.

import { changesKeyHash } from "./key-hash.ts";

/**
 * The version of the per-table objects' SQL, part of each table's surface signature: a table
 * whose surface was made by another version is made again (installStrataSchema).
 */
export const TABLE_SURFACE_VERSION = 11;

export const TABLE_SURFACE_SQL = `
-- The key a table's history is kept under: as recorded, else its snapshot base's, else its
-- primary key's (NULL: none).
CREATE OR REPLACE FUNCTION strata.history_keys(p_rel text, tbl regclass) RETURNS text[]
LANGUAGE sql STABLE AS $$
  SELECT nullif(coalesce(
    (SELECT key_columns FROM strata.table_surfaces WHERE rel = p_rel),
    (SELECT key_columns FROM strata.snapshot_bases WHERE rel = p_rel ORDER BY commit_seq DESC LIMIT 1),
    (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_index i
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = tbl AND i.indisprimary)), '{}')
$$;

-- SQL for a FROM item: the row image \`image\` as a record called \`alias\`, of the table's row type
-- (row_type), or for a dropped table (row_type NULL) of the columns it had (col_defs). Where
-- columns changed type (retyped, strata.retyped_columns), older images go through
-- strata.readable_image first.
DROP FUNCTION IF EXISTS strata.image_record_sql(text, text, text, text);
CREATE OR REPLACE FUNCTION strata.image_record_sql(image text, alias text, row_type text, col_defs text, retyped jsonb)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN row_type IS NULL THEN format('jsonb_to_record(%s) AS %s(%s)', image, alias, col_defs)
              WHEN retyped IS NOT NULL
              THEN format('jsonb_populate_record(NULL::%1$s, strata.readable_image(%2$s, %4$L::jsonb, NULL::%1$s)) %3$s',
                          row_type, image, alias, retyped)
              ELSE format('jsonb_populate_record(NULL::%s, %s) %s', row_type, image, alias) END
$$;

-- The table's columns (names, today's types) that history recorded with another type: their
-- values in older images may not read as today's type ({"name": true, ...}; NULL: none). Names
-- are today's (a later rename applies, as to an image written there).
CREATE OR REPLACE FUNCTION strata.retyped_columns(p_rel text, names text[], types text[]) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  st jsonb := strata.rename_stretches(p_rel);
  found jsonb := '{}';
  r record;
  today text;
BEGIN
  FOR r IN
    SELECT x.seq, x.ord, c ->> 'name' AS name, c ->> 'type' AS type FROM (
      SELECT s.commit_seq AS seq, s.ord::bigint AS ord, s.definition AS def
        FROM strata.schema_changes s WHERE s.rel = p_rel AND s.definition ? 'columns'
      UNION ALL
      SELECT 9223372036854775807, w.id, w.definition
        FROM strata.working_schema_changes w WHERE w.rel = p_rel AND w.definition ? 'columns'
      UNION ALL
      SELECT e.commit_seq, -1, e.definition FROM strata.table_entries e WHERE e.rel = p_rel AND e.definition ? 'columns'
    ) x CROSS JOIN LATERAL jsonb_array_elements(x.def -> 'columns') c
  LOOP
    today := (SELECT k FROM jsonb_object_keys(strata.image_at(st, r.seq, r.ord, jsonb_build_object(r.name, 0))) k LIMIT 1);
    IF today = ANY (names) AND r.type IS DISTINCT FROM types[array_position(names, today)] THEN
      found := found || jsonb_build_object(today, true);
    END IF;
  END LOOP;
  RETURN CASE WHEN found = '{}' THEN NULL ELSE found END;
END
$fn$;

-- An image whose retyped columns hold values today's type cannot read (older images: a text
-- column made int with USING, say) without those values: they read as null instead of failing
-- the whole read. An image that reads as it is costs one try.
CREATE OR REPLACE FUNCTION strata.readable_image(j jsonb, retyped jsonb, row_type anyelement) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  img jsonb := j;
  k text;
BEGIN
  IF j IS NULL THEN RETURN NULL; END IF;
  BEGIN
    PERFORM jsonb_populate_record(row_type, j);
    RETURN j;
  EXCEPTION WHEN OTHERS THEN
    NULL;
  END;
  FOR k IN SELECT jsonb_object_keys(retyped) LOOP
    CONTINUE WHEN NOT img ? k;
    BEGIN
      PERFORM jsonb_populate_record(row_type, jsonb_build_object(k, img -> k));
    EXCEPTION WHEN OTHERS THEN
      img := img - k;
    END;
  END LOOP;
  RETURN img;
END
$fn$;

CREATE OR REPLACE FUNCTION strata.drop_table_surface(p_schema text, p_table text) RETURNS void
LANGUAGE plpgsql SET client_min_messages = warning AS $fn$
DECLARE
  f regprocedure;
BEGIN
  EXECUTE format('DROP VIEW IF EXISTS %I.%I', p_schema, 'dolt_history_' || p_table);
  EXECUTE format('DROP VIEW IF EXISTS %I.%I', p_schema, 'dolt_diff_' || p_table);
  EXECUTE format('DROP VIEW IF EXISTS %I.%I', p_schema, 'dolt_blame_' || p_table);
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = p_schema
              AND p.proname IN ('dolt_history_' || p_table, 'dolt_as_of_' || p_table, 'dolt_diff_' || p_table, 'dolt_blame_' || p_table) LOOP
    EXECUTE format('DROP FUNCTION IF EXISTS %s', f);
  END LOOP;
  UPDATE strata.table_surfaces SET signature = '' WHERE schema_name = p_schema AND table_name = p_table;
END
$fn$;

-- (Re)create T's surface when it is missing or T's columns or key changed. p_keys is the key the
-- writer records T's changes under ('{}' for none); NULL keeps the recorded one.
CREATE OR REPLACE FUNCTION strata.ensure_table_surface(p_schema text, p_table text, p_keys text[] DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET client_min_messages = warning AS $fn$
DECLARE
  tbl regclass := to_regclass(format('%I.%I', p_schema, p_table));
  v_rel text := p_schema || '.' || p_table;
  q text := format('%I.%I', p_schema, p_table);
  own text; -- the table's own rows as a FROM item (strata.own_rows)
  names text[];
  types text[];
  keys text[];
  v_sig text;
  rel_l text := quote_literal(p_schema || '.' || p_table);
  reg_l text := quote_literal(format('%I.%I', p_schema, p_table)) || '::regclass';
  keys_l text;
  col_defs text;
  m_hash text; m_committer text; m_date text;
  diff_to text;
  diff_from text;
  diff_out text;
  m_to text; m_to_date text; m_from text; m_from_date text; m_type text;
  key_params text;
  key_json text;
  renamed boolean;
  dropped jsonb; -- a dropped table's columns (strata.table_surfaces.dropped_columns)
  row_type text; -- NULL for a dropped table
  retyped jsonb; -- strata.retyped_columns
  new_image text;
  i int;
BEGIN
  IF tbl IS NULL THEN
    -- A dropped table whose rows at the drop were recorded (strata.keep_dropped_surface): its past
    -- is all in history, read with the columns it had.
    SELECT s.dropped_columns INTO dropped FROM strata.table_surfaces s WHERE s.rel = v_rel;
    IF dropped IS NULL THEN RETURN; END IF;
    names := ARRAY(SELECT jsonb_array_elements_text(dropped->'names'));
    types := ARRAY(SELECT jsonb_array_elements_text(dropped->'types'));
    reg_l := 'NULL::regclass';
  ELSE
    row_type := q;
    own := strata.own_rows(tbl);
    SELECT array_agg(a.attname::text ORDER BY a.attnum), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
      INTO names, types
      FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped;
    IF names IS NULL THEN RETURN; END IF;
    PERFORM strata.record_new_column_names(tbl);
  END IF;
  keys := coalesce(p_keys, strata.history_keys(v_rel, tbl), '{}');
  -- A table with renamed columns reads older images under today's names (column-renames-sql.ts).
  renamed := strata.has_renames(v_rel);
  -- Columns whose older values may not read as today's type.
  IF row_type IS NOT NULL THEN
    retyped := strata.retyped_columns(v_rel, names, types);
  END IF;
  v_sig := jsonb_build_object('v', ${TABLE_SURFACE_VERSION}, 'names', names, 'types', types, 'keys', keys, 'renamed', renamed,
                              'dropped', dropped IS NOT NULL, 'retyped', retyped)::text;
  IF EXISTS (SELECT 1 FROM strata.table_surfaces s WHERE s.rel = v_rel AND s.signature = v_sig)
     AND to_regclass(format('%I.%I', p_schema, 'dolt_history_' || p_table)) IS NOT NULL THEN
    RETURN;
  END IF;
  PERFORM strata.drop_table_surface(p_schema, p_table);
  keys_l := CASE WHEN cardinality(keys) = 0 THEN 'ARRAY[]::text[]' ELSE quote_literal(keys::text) || '::text[]' END;
  SELECT string_agg(format('%I %s', n, types[o]), ', ' ORDER BY o) INTO col_defs
    FROM unnest(names) WITH ORDINALITY AS u(n, o);
  -- A dropped table has no rows now: its snapshot bases (none, or its rows would not have been
  -- recorded) read an empty relation of its columns.
  own := coalesce(own, format('(SELECT * FROM jsonb_to_record(''{}''::jsonb) AS e(%s) WHERE false)', col_defs));
  new_image := CASE WHEN renamed THEN 'strata.image_at(rs.st, c.commit_seq, c.ord, c.new_row)' ELSE 'c.new_row' END;

  -- History: versions written as history, then the versions of snapshot bases (rows untouched
  -- since the base as they are now, the others as their first later change found them). A
  -- change's identity is the key it found the row under. A later base (a resync) only follows a
  -- truncate, which touched every row of the earlier one.
  m_hash := strata.meta_name('commit_hash', names);
  m_committer := strata.meta_name('committer', names);
  m_date := strata.meta_name('commit_date', names);
  EXECUTE format($sql$
    CREATE FUNCTION %1$I.%2$I() RETURNS TABLE (%3$s, %4$I text, %5$I text, %6$I timestamptz) LANGUAGE sql STABLE AS $strata$
      SELECT r.*, k.hash, k.committer, k.date
        FROM strata.changes c
        JOIN strata.commits k ON k.seq = c.commit_seq
        %16$s
        CROSS JOIN LATERAL %7$s
       WHERE c.rel = %8$s AND c.new_row IS NOT NULL
      UNION ALL
      SELECT r.*, k.hash, k.committer, k.date
        FROM strata.snapshot_bases b
        JOIN strata.commits k ON k.seq = b.commit_seq
        %16$s
        CROSS JOIN LATERAL (SELECT %11$s AS keys OFFSET 0) bk  -- the base's key, by today's names
        CROSS JOIN LATERAL (
          SELECT t.* FROM %17$s t
           -- Each row's key, made once (OFFSET 0 keeps the planner from copying it into both
           -- probes): directly from its columns when the base's key is the table's.
           CROSS JOIN LATERAL (SELECT %9$s AS k OFFSET 0) tk
           WHERE NOT EXISTS (SELECT 1 FROM strata.snapshot_bases later
                              WHERE later.rel = b.rel AND later.commit_seq > b.commit_seq)
             AND %12$s
          UNION ALL
          SELECT f.* FROM (
            -- Each key's first mention after the base: a change that finds a row under it, or
            -- one that leaves a row under it (an insert, or an update that moved a row there,
            -- which makes no version at the base).
            SELECT DISTINCT ON (m.k) m.op, m.old_row, m.arrives
              FROM (SELECT %13$s AS k, c.commit_seq, c.ord, c.op, %14$s AS old_row, false AS arrives
                      FROM strata.changes c
                     WHERE c.rel = b.rel AND c.commit_seq > b.commit_seq
                    UNION ALL
                    SELECT %15$s, c.commit_seq, c.ord, c.op, NULL, true
                      FROM strata.changes c
                     WHERE c.rel = b.rel AND c.commit_seq > b.commit_seq AND c.old_key IS NOT NULL) m
             ORDER BY m.k, m.commit_seq, m.ord
          ) first_touch
          CROSS JOIN LATERAL %10$s
           WHERE first_touch.op <> 'I' AND NOT first_touch.arrives
        ) r
       WHERE b.rel = %8$s
    $strata$$sql$,
    p_schema, 'dolt_history_' || p_table, col_defs, m_hash, m_committer, m_date,
    strata.image_record_sql(new_image, 'r', row_type, col_defs, retyped), rel_l,
    CASE WHEN cardinality(keys) > 0 AND keys <@ names
         THEN format('CASE WHEN bk.keys = %s THEN %s ELSE strata.key_of(to_jsonb(t.*), bk.keys) END',
                     keys_l, strata.key_expression(keys, 't'))
         ELSE 'strata.key_of(to_jsonb(t.*), bk.keys)' END,
    strata.image_record_sql('first_touch.old_row', 'f', row_type, col_defs, retyped),
    CASE WHEN renamed THEN 'strata.renamed_names(b.key_columns, strata.map_at(rs.st, b.commit_seq, -1))' ELSE 'b.key_columns' END,
    CASE WHEN renamed
         -- (Committed changes only: below 9223372036854775807, the working set's.)
         THEN 'NOT EXISTS (SELECT 1 FROM strata.key_mentions(b.rel, rs.st, tk.k, b.commit_seq, 9223372036854775806))'
         ELSE 'NOT EXISTS (SELECT 1 FROM strata.changes c
                            WHERE ${changesKeyHash("c.rel", "c.row_key")} = ${changesKeyHash("b.rel", "tk.k")}
                              AND c.rel = b.rel AND c.row_key = tk.k AND c.commit_seq > b.commit_seq)
           AND NOT EXISTS (SELECT 1 FROM strata.changes c
                            WHERE c.rel = b.rel AND c.old_key = tk.k AND c.commit_seq > b.commit_seq)' END,
    CASE WHEN renamed THEN 'strata.image_at(rs.st, c.commit_seq, c.ord, coalesce(c.old_key, c.row_key))' ELSE 'coalesce(c.old_key, c.row_key)' END,
    CASE WHEN renamed THEN 'strata.image_at(rs.st, c.commit_seq, c.ord, c.old_row)' ELSE 'c.old_row' END,
    CASE WHEN renamed THEN 'strata.image_at(rs.st, c.commit_seq, c.ord, c.row_key)' ELSE 'c.row_key' END,
    -- A table with renames: its stretches, made once per query.
    CASE WHEN renamed THEN format('CROSS JOIN (SELECT strata.rename_stretches(%s) AS st OFFSET 0) rs', rel_l) ELSE '' END,
    own);
  EXECUTE format('CREATE VIEW %1$I.%2$I AS SELECT * FROM %1$I.%2$I()', p_schema, 'dolt_history_' || p_table);

  -- As of a commit: the whole table, and one row by key (key values in key order).
  EXECUTE format($sql$
    CREATE FUNCTION %1$I.%2$I(text) RETURNS TABLE (%3$s) LANGUAGE sql STABLE AS $strata$
      SELECT r.* FROM strata.rows_as_of(%4$s, %5$s, %6$s, dolt.commit_seq($1)) AS j(j)
       CROSS JOIN LATERAL %7$s
    $strata$$sql$,
    p_schema, 'dolt_as_of_' || p_table, col_defs, rel_l, reg_l, keys_l, strata.image_record_sql('j.j', 'r', row_type, col_defs, retyped));
  IF cardinality(keys) > 0 AND keys <@ names THEN
    SELECT string_agg(types[array_position(names, k)], ', ' ORDER BY o),
           'jsonb_build_object(' || string_agg(format('%L, $%s', k, o + 1), ', ' ORDER BY o) || ')'
      INTO key_params, key_json
      FROM unnest(keys) WITH ORDINALITY AS u(k, o);
    EXECUTE format($sql$
      CREATE FUNCTION %1$I.%2$I(text, %3$s) RETURNS TABLE (%4$s) LANGUAGE sql STABLE AS $strata$
        SELECT r.* FROM strata.row_as_of(%5$s, %6$s, %7$s, dolt.commit_seq($1), %8$s) AS j(j)
         CROSS JOIN LATERAL %9$s
      $strata$$sql$,
      p_schema, 'dolt_as_of_' || p_table, key_params, col_defs, rel_l, reg_l, keys_l, key_json,
      strata.image_record_sql('j.j', 'r', row_type, col_defs, retyped));
  END IF;

  -- Diffs: to_<col>, to_commit, to_commit_date, from_<col>, from_commit, from_commit_date, diff_type.
  m_to := strata.meta_name('to_commit', names, 'to_', 'from_');
  m_to_date := strata.meta_name('to_commit_date', names, 'to_', 'from_');
  m_from := strata.meta_name('from_commit', names, 'to_', 'from_');
  m_from_date := strata.meta_name('from_commit_date', names, 'to_', 'from_');
  m_type := strata.meta_name('diff_type', names, 'to_', 'from_');
  SELECT string_agg(format('t.%I', n), ', ' ORDER BY o), string_agg(format('f.%I', n), ', ' ORDER BY o)
    INTO diff_to, diff_from FROM unnest(names) WITH ORDINALITY AS u(n, o);
  SELECT string_agg(format('%I %s', 'to_' || n, types[o]), ', ' ORDER BY o) || format(', %I text, %I timestamptz, ', m_to, m_to_date)
         || string_agg(format('%I %s', 'from_' || n, types[o]), ', ' ORDER BY o) || format(', %I text, %I timestamptz, %I text', m_from, m_from_date, m_type)
    INTO diff_out FROM unnest(names) WITH ORDINALITY AS u(n, o);
  EXECUTE format($sql$
    CREATE FUNCTION %1$I.%2$I(text, text) RETURNS TABLE (%3$s) LANGUAGE sql STABLE AS $strata$
      SELECT %4$s, coalesce(tc.hash, 'WORKING'), tc.date, %5$s, coalesce(fc.hash, 'WORKING'), fc.date,
             CASE WHEN d.from_row IS NULL THEN 'added' WHEN d.to_row IS NULL THEN 'removed' ELSE 'modified' END
        FROM (SELECT dolt.commit_seq($1) AS fs, dolt.commit_seq($2) AS ts OFFSET 0) q  -- OFFSET 0: name each commit once
        LEFT JOIN strata.commits fc ON fc.seq = q.fs
        LEFT JOIN strata.commits tc ON tc.seq = q.ts
       CROSS JOIN LATERAL strata.diff_rows(%6$s, %7$s, %8$s, q.fs, q.ts) d
       CROSS JOIN LATERAL %9$s
       CROSS JOIN LATERAL %10$s
    $strata$$sql$,
    p_schema, 'dolt_diff_' || p_table, diff_out, diff_to, diff_from, rel_l, reg_l, keys_l,
    strata.image_record_sql('d.to_row', 't', row_type, col_defs, retyped), strata.image_record_sql('d.from_row', 'f', row_type, col_defs, retyped));
  EXECUTE format($sql$
    CREATE FUNCTION %1$I.%2$I() RETURNS TABLE (%3$s) LANGUAGE sql STABLE AS $strata$
      SELECT %4$s, k.hash, k.date, %5$s, p.hash, p.date,
             CASE WHEN d.from_row IS NULL THEN 'added' WHEN d.to_row IS NULL THEN 'removed' ELSE 'modified' END
        FROM strata.commits k
        LEFT JOIN strata.commits p ON p.hash = k.parent_hash
       CROSS JOIN LATERAL strata.diff_rows(%6$s, %7$s, %8$s, coalesce(p.seq, 0), k.seq) d
       CROSS JOIN LATERAL %9$s
       CROSS JOIN LATERAL %10$s
      UNION ALL
      -- The uncommitted working set, against the last commit, as Doltgres shows it.
      SELECT %4$s, 'WORKING', NULL::timestamptz, %5$s, h.hash, h.date,
             CASE WHEN d.from_row IS NULL THEN 'added' WHEN d.to_row IS NULL THEN 'removed' ELSE 'modified' END
        FROM (SELECT seq, hash, date FROM strata.commits ORDER BY seq DESC LIMIT 1) h
       CROSS JOIN LATERAL strata.diff_rows(%6$s, %7$s, %8$s, h.seq, 9223372036854775807) d
       CROSS JOIN LATERAL %9$s
       CROSS JOIN LATERAL %10$s
    $strata$$sql$,
    p_schema, 'dolt_diff_' || p_table, diff_out, diff_to, diff_from, rel_l, reg_l, keys_l,
    strata.image_record_sql('d.to_row', 't', row_type, col_defs, retyped), strata.image_record_sql('d.from_row', 'f', row_type, col_defs, retyped));
  EXECUTE format('CREATE VIEW %1$I.%2$I AS SELECT * FROM %1$I.%2$I()', p_schema, 'dolt_diff_' || p_table);

  -- Blame: the last commit that touched each row now present (its last change, else its base).
  IF cardinality(keys) > 0 AND keys <@ names THEN
    EXECUTE format($sql$
      CREATE FUNCTION %1$I.%2$I() RETURNS TABLE (%3$s, %4$I text, %5$I timestamptz, %6$I text, %7$I text, %8$I text)
      LANGUAGE sql STABLE AS $strata$
        SELECT %9$s, k.hash, k.date, k.committer, k.email, k.message
          FROM %10$s t
         %14$s
         CROSS JOIN LATERAL (SELECT coalesce(%13$s,
                 (SELECT max(b.commit_seq) FROM strata.snapshot_bases b WHERE b.rel = %11$s)) AS seq %15$s) last
         JOIN strata.commits k ON k.seq = last.seq
      $strata$$sql$,
      p_schema, 'dolt_blame_' || p_table,
      (SELECT string_agg(format('%I %s', k, types[array_position(names, k)]), ', ' ORDER BY o)
         FROM unnest(keys) WITH ORDINALITY AS u(k, o)),
      strata.meta_name('commit', keys), strata.meta_name('commit_date', keys), strata.meta_name('committer', keys),
      strata.meta_name('email', keys), strata.meta_name('message', keys),
      (SELECT string_agg(format('t.%I', k), ', ' ORDER BY o) FROM unnest(keys) WITH ORDINALITY AS u(k, o)),
      own, rel_l, strata.key_expression(keys, 't'),
      format(CASE WHEN renamed
                  THEN '(SELECT max(x.commit_seq) FROM strata.key_mentions(%1$s, rs.st, %2$s, -1, 9223372036854775806) x WHERE NOT x.moved_away)'
                  ELSE '(SELECT c.commit_seq FROM strata.changes c
                          WHERE ${changesKeyHash("c.rel", "c.row_key")} = ${changesKeyHash("%1$s", "%2$s")}
                            AND c.rel = %1$s AND c.row_key = %2$s ORDER BY c.commit_seq DESC LIMIT 1)' END,
             rel_l, strata.key_expression(keys, 't')),
      CASE WHEN renamed THEN format('CROSS JOIN (SELECT strata.rename_stretches(%s) AS st OFFSET 0) rs', rel_l) ELSE '' END,
      -- With renames, OFFSET 0 has each row's last commit found once (the join would find it
      -- again); without, the planner's own plan is the faster.
      CASE WHEN renamed THEN 'OFFSET 0' ELSE '' END);
    EXECUTE format('CREATE VIEW %1$I.%2$I AS SELECT * FROM %1$I.%2$I()', p_schema, 'dolt_blame_' || p_table);
  END IF;

  INSERT INTO strata.table_surfaces (rel, schema_name, table_name, key_columns, signature, dropped_columns)
  VALUES (v_rel, p_schema, p_table, keys, v_sig, dropped)
  ON CONFLICT (rel) DO UPDATE SET key_columns = excluded.key_columns, signature = excluded.signature,
                                  dropped_columns = excluded.dropped_columns;
END
$fn$;
`;

/** Installed before TABLE_SURFACE_SQL: a metadata column's name, prefixed strata_ where taken. */
export const META_NAME_SQL = `
CREATE OR REPLACE FUNCTION strata.meta_name(name text, taken text[], VARIADIC prefixes text[] DEFAULT ARRAY['']) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN EXISTS (SELECT 1 FROM unnest(prefixes) p, unnest(taken) t WHERE p || t = name)
              THEN 'strata_' || name ELSE name END
$$;
`;
