// The version-control read surface that does not depend on a table's columns: naming commits,
// the states of a table's rows at a commit, and the rows that differ between two commits. The
// per-table objects (dolt_as_of_<t>, dolt_diff_<t>, dolt_blame_<t>; see table-surface.ts) are thin
// typed wrappers over these functions, which work on row images (jsonb) as history stores them.
//
// How a row's state at commit C is found without a second copy of the data (strata.changes holds
// every change with the row's image before and after it):
//
//   - a key's *mentions* are the changes that find a row under it (updates and deletes, with the
//     image before) or leave a row under it (inserts and updates, with the image after); an update
//     that changes the key mentions the old key (before) and the new key (after) separately;
//   - the state of key K at C is the "before" image of K's first mention after C (absent when that
//     mention only leaves a row, an insert), or, when nothing mentions K after C, the row as it is
//     now;
//   - a snapshot base at B (strata.snapshot_bases: rows copied without history rows) means the
//     table was empty just before B, so for C < B only the changes between C and B count and rows
//     untouched since B did not exist at C.
//
// So "K as of C" is one index descent of changes_key (a hash of rel and row_key, then
// commit_seq), and the difference
// between two commits touching k rows is a range scan of changes(commit_seq): O(k log n).
// Tables without a key (REPLICA IDENTITY FULL, no primary key) are multisets of row images: the
// state at C is the rows now, plus the images changes after C removed, minus those they added.
// "Changes after C" include the uncommitted working set of a database written through SQL: the
// rows now are the working state, not the last commit's.

import { changesKeyHash } from "./key-hash.ts";

export const SURFACE_SQL = `
CREATE INDEX IF NOT EXISTS commits_upstream_commit_lsn ON strata.commits (upstream_commit_lsn);
CREATE INDEX IF NOT EXISTS commits_date ON strata.commits (date, seq);

-- The tables that have the per-table surface, and the key their history is kept under.
CREATE TABLE IF NOT EXISTS strata.table_surfaces (
  rel text PRIMARY KEY,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  key_columns text[] NOT NULL,
  signature text NOT NULL
);
-- A dropped table whose rows at the drop were recorded keeps its surface, made from the columns
-- it had then ({"names": [...], "types": [...]}; NULL for a table that exists).
ALTER TABLE strata.table_surfaces ADD COLUMN IF NOT EXISTS dropped_columns jsonb;

-- A commit named the way Doltgres names them: HEAD (or the branch's name, STAGED), WORKING (the working set,
-- numbered after every commit), a hash or a unique
-- prefix of one, a timestamp (the last commit at or before it), or lsn:X/Y (the last commit of an
-- upstream transaction that committed at or before that LSN); any of them followed by ~N or ^
-- (ancestors).
CREATE OR REPLACE FUNCTION dolt.commit_seq(commit_name text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  spec text := btrim(coalesce(commit_name, ''));
  base text;
  suffix text;
  step text[];
  back bigint := 0;
  found_seq bigint;
  n bigint;
  at timestamptz;
  lsn pg_lsn;
  forms constant text := 'name a commit by its hash (or a unique prefix of it), HEAD, HEAD~N, a tag, a timestamp, or lsn:X/Y; SELECT * FROM dolt_log lists them';
BEGIN
  IF spec = '' THEN
    RAISE EXCEPTION 'no commit named: the commit name is empty' USING ERRCODE = '22023', HINT = forms;
  END IF;
  IF lower(spec) LIKE 'lsn:%' THEN
    BEGIN
      lsn := btrim(substr(spec, 5))::pg_lsn;
    EXCEPTION WHEN others THEN
      RAISE EXCEPTION 'commit name "%" is not an LSN', spec
        USING ERRCODE = '22023', HINT = 'write an upstream LSN as lsn:X/Y, e.g. lsn:0/16B3748';
    END;
    SELECT seq INTO found_seq FROM strata.commits
     WHERE upstream_commit_lsn <= lsn ORDER BY upstream_commit_lsn DESC, seq DESC LIMIT 1;
    IF found_seq IS NULL THEN
      -- Replicated transactions carry an upstream LSN, and initial snapshots their consistent
      -- point (snapshots taken before Strata recorded it have none); commits made through SQL
      -- have none.
      RAISE EXCEPTION 'no replicated commit at or before upstream LSN %', lsn
        USING ERRCODE = '22023',
              HINT = (SELECT CASE WHEN f IS NULL
                                  THEN 'no commit here names an upstream LSN (only replicated transactions and initial snapshots do): name a commit by hash, HEAD~N or a time'
                                  ELSE format('the first replicated commit is at upstream LSN %s; the primary''s state before it is not here: name earlier commits, if any, by hash or HEAD~N', f) END
                        FROM (SELECT min(upstream_commit_lsn)::text AS f FROM strata.commits) x);
    END IF;
    RETURN found_seq;
  END IF;
  suffix := substring(spec FROM '((?:[~^][0-9]*)+)$');
  base := CASE WHEN suffix IS NULL THEN spec ELSE left(spec, length(spec) - length(suffix)) END;
  IF suffix IS NOT NULL THEN
    FOR step IN SELECT regexp_matches(suffix, '([~^])([0-9]*)', 'g') LOOP
      IF step[1] = '~' THEN
        back := back + coalesce(nullif(step[2], '')::bigint, 1);
      ELSIF coalesce(nullif(step[2], ''), '1') = '1' THEN
        back := back + 1;
      ELSIF step[2] <> '0' THEN
        RAISE EXCEPTION 'commit name "%" asks for parent number %, but commits here have one parent', spec, step[2]
          USING ERRCODE = '22023', HINT = 'use ~N to go N commits back';
      END IF;
    END LOOP;
  END IF;
  -- WORKING: the tables as they are now, uncommitted changes included (after every commit).
  IF upper(base) = 'WORKING' AND back = 0 THEN
    RETURN 9223372036854775807;
  END IF;
  IF upper(base) IN ('HEAD', 'WORKING', 'STAGED') OR base = dolt.active_branch() THEN
    SELECT max(seq) INTO found_seq FROM strata.commits;
    IF found_seq IS NULL THEN
      RAISE EXCEPTION 'there are no commits yet, so "%" names none', spec
        USING ERRCODE = '22023',
              HINT = 'on a replica, the first commit is the initial snapshot or the first replicated transaction; elsewhere, make one with dolt_commit(''-Am'', ''message''); AS OF ''WORKING'' reads the tables as they are';
    END IF;
  END IF;
  IF found_seq IS NULL AND to_regclass('strata.tags') IS NOT NULL THEN
    SELECT c.seq INTO found_seq FROM strata.tags t JOIN strata.commits c ON c.hash = t.commit_hash WHERE t.name = base;
  END IF;
  IF found_seq IS NULL AND base ~ '^[0-9a-v]+$' THEN
    SELECT count(*), min(seq) INTO n, found_seq FROM (
      SELECT seq FROM strata.commits WHERE hash ~>=~ base AND hash ~<~ (base || 'w') LIMIT 2) m;
    IF n > 1 THEN
      RAISE EXCEPTION 'commit name "%" is ambiguous: more than one commit hash starts with it', base
        USING ERRCODE = '22023', HINT = 'give more characters of the hash';
    END IF;
  END IF;
  IF found_seq IS NULL THEN
    BEGIN
      at := base::timestamptz;
    EXCEPTION WHEN others THEN
      RAISE EXCEPTION 'no commit named "%"', base USING ERRCODE = '22023', HINT = forms;
    END;
    SELECT seq INTO found_seq FROM strata.commits WHERE date <= at ORDER BY date DESC, seq DESC LIMIT 1;
    IF found_seq IS NULL THEN
      RAISE EXCEPTION 'no commit at or before %', at
        USING ERRCODE = '22023',
              HINT = format('the first commit is at %s', coalesce((SELECT min(date)::text FROM strata.commits), 'no commit yet'));
    END IF;
  END IF;
  IF back > 0 THEN
    -- History is linear and commit_order dense (each commit's parent is the one numbered before
    -- it: every writer takes max + 1 in the transaction that writes it), so the N-th ancestor is
    -- one index lookup, not a walk.
    SELECT seq INTO n FROM strata.commits WHERE seq = found_seq - back;
    IF n IS NULL THEN
      RAISE EXCEPTION 'commit name "%" goes back before the first commit', spec
        USING ERRCODE = '22023',
              HINT = (SELECT format('%s has %s ancestor%s', base, a, CASE WHEN a = 1 THEN '' ELSE 's' END)
                        FROM (SELECT count(*) - 1 AS a FROM strata.commits WHERE seq <= found_seq) x);
    END IF;
    found_seq := n;
  END IF;
  RETURN found_seq;
END
$fn$;

CREATE OR REPLACE FUNCTION dolt.commit_hash(commit_name text) RETURNS text
LANGUAGE sql STABLE AS $$ SELECT hash FROM strata.commits WHERE seq = dolt.commit_seq(commit_name) $$;

-- dolt_log from a commit: that commit and its ancestors, newest first.
CREATE OR REPLACE FUNCTION dolt.dolt_log(revision text) RETURNS SETOF dolt.dolt_log
LANGUAGE sql STABLE AS $$
  SELECT l.* FROM dolt.dolt_log l WHERE l.commit_order <= dolt.commit_seq(revision) ORDER BY l.commit_order DESC
$$;

-- Per key touched in commits (lo, hi]: the row before the first change and after the last
-- (NULL: no row), for a keyed table. Keys and rows under today's column names
-- (column-renames-sql.ts), rows as of lo and hi (column-additions-sql.ts).
CREATE OR REPLACE FUNCTION strata.key_states(p_rel text, lo bigint, hi bigint)
RETURNS TABLE (row_key jsonb, from_row jsonb, to_row jsonb)
LANGUAGE sql STABLE AS $$
  SELECT s.k, strata.image_as_of(ad.flo, ad.alo, s.before), strata.image_as_of(ad.fhi, ad.ahi, s.after)
    FROM (
      SELECT m.k,
             (array_agg(m.before ORDER BY m.seq, m.ord, m.side))[1] AS before,
             (array_agg(m.after ORDER BY m.seq DESC, m.ord DESC, m.side DESC))[1] AS after
        FROM (
          SELECT x.seq, x.ord, x.side,
                 strata.image_at(r.st, x.seq, x.ord, x.k) AS k,
                 strata.image_at(r.st, x.seq, x.ord, x.before) AS before,
                 strata.image_at(r.st, x.seq, x.ord, x.after) AS after
            FROM (
              SELECT c.commit_seq AS seq, c.ord, 0 AS side, coalesce(c.old_key, c.row_key) AS k,
                     CASE WHEN c.op = 'I' THEN NULL ELSE c.old_row END AS before,
                     CASE WHEN c.op = 'I' OR (c.op = 'U' AND c.old_key IS NULL) THEN c.new_row END AS after
                FROM strata.changes_and_working c
               WHERE c.commit_seq > lo AND c.commit_seq <= hi AND c.rel = p_rel
              UNION ALL
              SELECT c.commit_seq, c.ord, 1, c.row_key, NULL, c.new_row
                FROM strata.changes_and_working c
               WHERE c.commit_seq > lo AND c.commit_seq <= hi AND c.rel = p_rel AND c.op = 'U' AND c.old_key IS NOT NULL
            ) x CROSS JOIN (SELECT strata.rename_stretches(p_rel) AS st OFFSET 0) r
        ) m
       GROUP BY m.k
    ) s CROSS JOIN (SELECT strata.fills_at(z.a, lo) AS flo, strata.columns_absent_at(z.a, lo) AS alo,
                           strata.fills_at(z.a, hi) AS fhi, strata.columns_absent_at(z.a, hi) AS ahi
                      FROM (SELECT strata.column_additions(p_rel) AS a) z OFFSET 0) ad
$$;

-- The row images changes in (lo, hi] removed (weight 1) and added (-1), under today's column
-- names and as of commit target: how a table without a key is rolled back.
CREATE OR REPLACE FUNCTION strata.image_changes(p_rel text, lo bigint, hi bigint, target bigint)
RETURNS TABLE (j jsonb, w int)
LANGUAGE sql STABLE AS $$
  SELECT strata.image_as_of(ad.f, ad.absent, strata.image_at(r.st, x.seq, x.ord, x.j)), x.w
    FROM (
      SELECT c.commit_seq AS seq, c.ord, c.old_row AS j, 1 AS w FROM strata.changes_and_working c
       WHERE c.commit_seq > lo AND c.commit_seq <= hi AND c.rel = p_rel AND c.old_row IS NOT NULL
      UNION ALL
      SELECT c.commit_seq, c.ord, c.new_row, -1 FROM strata.changes_and_working c
       WHERE c.commit_seq > lo AND c.commit_seq <= hi AND c.rel = p_rel AND c.new_row IS NOT NULL
    ) x CROSS JOIN (SELECT strata.rename_stretches(p_rel) AS st OFFSET 0) r
        CROSS JOIN (SELECT strata.fills_at(z.a, target) AS f, strata.columns_absent_at(z.a, target) AS absent
                      FROM (SELECT strata.column_additions(p_rel) AS a) z OFFSET 0) ad
$$;
-- ... as of hi.
CREATE OR REPLACE FUNCTION strata.image_changes(p_rel text, lo bigint, hi bigint)
RETURNS TABLE (j jsonb, w int)
LANGUAGE sql STABLE AS $$ SELECT * FROM strata.image_changes(p_rel, lo, hi, hi) $$;

-- The first snapshot base of a table after commit at (NULL: none).
CREATE OR REPLACE FUNCTION strata.base_after(p_rel text, at bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$ SELECT min(commit_seq) FROM strata.snapshot_bases WHERE rel = p_rel AND commit_seq > at $$;

-- SQL that builds a row's key (as history records it) from alias.columns.
CREATE OR REPLACE FUNCTION strata.key_expression(key_columns text[], alias text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT 'jsonb_build_object(' || string_agg(format('%L, %s.%I', k, alias, k), ', ' ORDER BY i) || ')'
    FROM unnest(key_columns) WITH ORDINALITY AS u(k, i)
$$;

-- Every row of a table as of commit at, as row images.
CREATE OR REPLACE FUNCTION strata.rows_as_of(p_rel text, tbl regclass, key_columns text[], at bigint)
RETURNS SETOF jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  b bigint := strata.base_after(p_rel, at);
  upto bigint := coalesce(b - 1, 9223372036854775807);
  ad jsonb := strata.column_additions(p_rel);
  absent text[] := strata.columns_absent_at(ad, at);
BEGIN
  -- (tbl NULL: a dropped table, whose rows at the drop were recorded as deleted: no rows now.)
  IF cardinality(key_columns) > 0 THEN
    IF b IS NULL AND tbl IS NOT NULL THEN
      -- The keys touched since, each as it was; then the rows untouched since, as they are (one
      -- hash anti-join against the touched keys, not a probe of history per row).
      RETURN QUERY EXECUTE format(
        'WITH s AS MATERIALIZED (SELECT * FROM strata.key_states($1, $2, 9223372036854775807))
         SELECT s.from_row FROM s WHERE s.from_row IS NOT NULL
         UNION ALL
         SELECT to_jsonb(t) - $3 FROM %s t WHERE NOT EXISTS (SELECT 1 FROM s WHERE s.row_key = %s)',
        strata.own_rows(tbl), strata.key_expression(key_columns, 't'))
        USING p_rel, at, absent;
    ELSE
      RETURN QUERY SELECT s.from_row FROM strata.key_states(p_rel, at, upto) s WHERE s.from_row IS NOT NULL;
    END IF;
  ELSE
    RETURN QUERY EXECUTE format(
      'SELECT g.j FROM (
         SELECT x.j, sum(x.w) AS n FROM (
           %s
           SELECT i.j, i.w FROM strata.image_changes($1, $2, $3, $2) i
         ) AS x(j, w) GROUP BY x.j
       ) g CROSS JOIN LATERAL generate_series(1, g.n) WHERE g.n > 0',
      CASE WHEN b IS NULL AND tbl IS NOT NULL
           THEN format('SELECT to_jsonb(t) - $4, 1 FROM %s t UNION ALL', strata.own_rows(tbl)) ELSE '' END)
      USING p_rel, at, upto, absent;
  END IF;
END
$fn$;

-- The row with key p_key as of commit at (zero or one row image): index lookups only.
CREATE OR REPLACE FUNCTION strata.row_as_of(p_rel text, tbl regclass, key_columns text[], at bigint, p_key jsonb)
RETURNS SETOF jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  b bigint := strata.base_after(p_rel, at);
  upto bigint := coalesce(b - 1, 9223372036854775807);
  m record;
  hit boolean;
  st jsonb := strata.rename_stretches(p_rel);
  ad jsonb := strata.column_additions(p_rel);
BEGIN
  IF st IS NOT NULL THEN
    SELECT * INTO m FROM strata.key_mentions(p_rel, st, p_key, at, upto) x ORDER BY x.commit_seq, x.ord LIMIT 1;
    hit := FOUND;
    IF hit THEN
      m.old_row := strata.image_at(st, m.commit_seq, m.ord, m.old_row);
    END IF;
  ELSE
    SELECT * INTO m FROM (
      (SELECT c.commit_seq, c.ord, c.op, c.old_key, c.old_row, false AS moved_away FROM strata.changes_and_working c
        WHERE ${changesKeyHash("c.rel", "c.row_key")} = ${changesKeyHash("p_rel", "p_key")}
          AND c.rel = p_rel AND c.row_key = p_key AND c.commit_seq > at AND c.commit_seq <= upto
        ORDER BY c.commit_seq, c.ord LIMIT 1)
      UNION ALL
      (SELECT c.commit_seq, c.ord, c.op, c.old_key, c.old_row, true FROM strata.changes_and_working c
        WHERE c.rel = p_rel AND c.old_key = p_key AND c.commit_seq > at AND c.commit_seq <= upto
        ORDER BY c.commit_seq, c.ord LIMIT 1)
    ) first_mention ORDER BY commit_seq, ord LIMIT 1;
    hit := FOUND;
  END IF;
  IF hit THEN
    IF m.moved_away OR (m.op <> 'I' AND NOT (m.op = 'U' AND m.old_key IS NOT NULL)) THEN
      RETURN NEXT strata.image_as_of(strata.fills_at(ad, at), strata.columns_absent_at(ad, at), m.old_row);
    END IF;
  ELSIF b IS NULL AND tbl IS NOT NULL THEN
    RETURN QUERY EXECUTE format('SELECT to_jsonb(t) - $2 FROM %s t WHERE %s', strata.own_rows(tbl),
      (SELECT string_agg(format('t.%I = (jsonb_populate_record(NULL::%s, $1)).%I', k, tbl, k), ' AND ')
         FROM unnest(key_columns) k))
      USING p_key, strata.columns_absent_at(ad, at);
  END IF;
END
$fn$;

-- Whether a column of the table had another type at commit lo than at commit hi (by the
-- definitions recorded last by then; by name).
CREATE OR REPLACE FUNCTION strata.types_changed(p_rel text, lo bigint, hi bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
  WITH defs AS (
    SELECT s.commit_seq AS seq, s.ord::bigint AS ord, s.definition AS def
      FROM strata.schema_changes s WHERE s.rel = p_rel AND s.definition ? 'columns'
    UNION ALL
    SELECT 9223372036854775807, w.id, w.definition
      FROM strata.working_schema_changes w WHERE w.rel = p_rel AND w.definition ? 'columns'
  )
  SELECT EXISTS (
    SELECT 1
      FROM jsonb_array_elements((SELECT d.def FROM defs d WHERE d.seq <= lo ORDER BY d.seq DESC, d.ord DESC LIMIT 1) -> 'columns') a
      JOIN jsonb_array_elements((SELECT d.def FROM defs d WHERE d.seq <= hi ORDER BY d.seq DESC, d.ord DESC LIMIT 1) -> 'columns') b
        ON a ->> 'name' = b ->> 'name'
     WHERE a ->> 'type' IS DISTINCT FROM b ->> 'type')
$$;

-- The rows that differ between commits from_seq and to_seq (either order): the row image at
-- each side (NULL: no row).
CREATE OR REPLACE FUNCTION strata.diff_rows(p_rel text, tbl regclass, key_columns text[], from_seq bigint, to_seq bigint)
RETURNS TABLE (from_row jsonb, to_row jsonb)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  swapped boolean := from_seq > to_seq;
  lo bigint := least(from_seq, to_seq);
  hi bigint := greatest(from_seq, to_seq);
  ad jsonb;
  ad_read boolean := false;
  retyped boolean := false;
  lo_fills jsonb;
  lo_absent text[];
BEGIN
  IF lo = hi THEN RETURN; END IF;
  -- (Only a range with a schema change of the table may hold an addition or a new type.)
  IF EXISTS (SELECT 1 FROM strata.schema_changes s WHERE s.rel = p_rel AND s.commit_seq > lo AND s.commit_seq <= hi)
     OR (hi = 9223372036854775807 AND EXISTS (SELECT 1 FROM strata.working_schema_changes w WHERE w.rel = p_rel)) THEN
    ad := strata.column_additions(p_rel);
    ad_read := true;
    retyped := strata.types_changed(p_rel, lo, hi);
  END IF;
  IF retyped
     OR EXISTS (SELECT 1 FROM strata.snapshot_bases WHERE rel = p_rel AND commit_seq > lo AND commit_seq <= hi)
     OR EXISTS (SELECT 1 FROM jsonb_array_elements(ad) e
                 WHERE (e ->> 's')::bigint > lo AND (e ->> 's')::bigint <= hi AND coalesce(jsonb_typeof(e -> 'v'), 'null') <> 'null') THEN
    -- Rows appeared without history in between, or every row changed without history: a column
    -- added with a value for every row (column-additions-sql.ts), or a column's type changed
    -- (rewritten, perhaps with USING): compare the two states whole.
    IF cardinality(key_columns) > 0 THEN
      RETURN QUERY
        SELECT CASE WHEN swapped THEN t.j ELSE f.j END, CASE WHEN swapped THEN f.j ELSE t.j END
          FROM (SELECT j, strata.key_of(j, key_columns) AS k FROM strata.rows_as_of(p_rel, tbl, key_columns, lo) AS r(j)) f
          FULL JOIN (SELECT j, strata.key_of(j, key_columns) AS k FROM strata.rows_as_of(p_rel, tbl, key_columns, hi) AS r(j)) t
            ON f.k = t.k
         WHERE f.j IS DISTINCT FROM t.j;
    ELSE
      RETURN QUERY
        SELECT CASE WHEN swapped THEN NULL ELSE d.j END, CASE WHEN swapped THEN d.j ELSE NULL END
          FROM (SELECT j FROM strata.rows_as_of(p_rel, tbl, key_columns, lo) AS r(j)
                EXCEPT ALL SELECT j FROM strata.rows_as_of(p_rel, tbl, key_columns, hi) AS r(j)) d
        UNION ALL
        SELECT CASE WHEN swapped THEN a.j ELSE NULL END, CASE WHEN swapped THEN NULL ELSE a.j END
          FROM (SELECT j FROM strata.rows_as_of(p_rel, tbl, key_columns, hi) AS r(j)
                EXCEPT ALL SELECT j FROM strata.rows_as_of(p_rel, tbl, key_columns, lo) AS r(j)) a;
    END IF;
  ELSIF cardinality(key_columns) > 0 THEN
    RETURN QUERY
      SELECT CASE WHEN swapped THEN s.to_row ELSE s.from_row END, CASE WHEN swapped THEN s.from_row ELSE s.to_row END
        FROM strata.key_states(p_rel, lo, hi) s
       WHERE s.from_row IS DISTINCT FROM s.to_row;
  ELSE
    IF NOT ad_read THEN ad := strata.column_additions(p_rel); END IF;
    lo_fills := strata.fills_at(ad, lo);
    lo_absent := strata.columns_absent_at(ad, lo);
    -- Images compared as of hi (so that one written before a column was added meets its later
    -- self), and those of rows at lo shown as of lo.
    RETURN QUERY
      SELECT CASE WHEN (g.n < 0) <> swapped THEN g.at_side END, CASE WHEN (g.n > 0) <> swapped THEN g.at_side END
        FROM (SELECT CASE WHEN sum(i.w) > 0 THEN strata.image_as_of(lo_fills, lo_absent, i.j) ELSE i.j END AS at_side,
                     -sum(i.w) AS n
                FROM strata.image_changes(p_rel, lo, hi) i
               GROUP BY i.j HAVING sum(i.w) <> 0) g
        CROSS JOIN LATERAL generate_series(1, abs(g.n));
  END IF;
END
$fn$;

-- A table named by a user: its history name and key (tbl NULL: a dropped table that kept its
-- surface).
CREATE OR REPLACE FUNCTION strata.surface_of(table_name text)
RETURNS TABLE (rel text, tbl regclass, key_columns text[])
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  t regclass := to_regclass(table_name);
  parts text[];
BEGIN
  IF t IS NULL THEN
    parts := parse_ident(table_name, false);
    RETURN QUERY SELECT s.rel, NULL::regclass, s.key_columns FROM strata.table_surfaces s
     WHERE s.dropped_columns IS NOT NULL
       AND s.rel = CASE WHEN cardinality(parts) > 1 THEN parts[1] || '.' || parts[2] ELSE current_schema() || '.' || parts[1] END;
    IF FOUND THEN RETURN; END IF;
    RAISE EXCEPTION 'table "%" does not exist', table_name USING ERRCODE = '42P01';
  END IF;
  RETURN QUERY SELECT s.rel, t, s.key_columns FROM strata.table_surfaces s
    JOIN pg_class c ON c.oid = t JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE s.schema_name = n.nspname AND s.table_name = c.relname;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'table "%" has no history', table_name
      USING ERRCODE = '42P01', HINT = 'history is kept for replicated tables while dolt_transaction_commit is on';
  END IF;
END
$fn$;

-- dolt_diff on the store itself: rows as jsonb, since a function's columns cannot depend on its
-- arguments. Through Strata's front door, dolt_diff('A', 'B', 't') returns t's columns as
-- to_<column> / from_<column> (it becomes t's dolt_diff_<t>('A', 'B')).
CREATE OR REPLACE FUNCTION dolt.dolt_diff(from_commit text, to_commit text, table_name text)
RETURNS TABLE (to_row jsonb, to_commit text, to_commit_date timestamptz,
               from_row jsonb, from_commit text, from_commit_date timestamptz, diff_type text)
LANGUAGE sql STABLE AS $$
  SELECT d.to_row, coalesce(tc.hash, 'WORKING'), tc.date, d.from_row, coalesce(fc.hash, 'WORKING'), fc.date,
         CASE WHEN d.from_row IS NULL THEN 'added' WHEN d.to_row IS NULL THEN 'removed' ELSE 'modified' END
    FROM strata.surface_of(table_name) s
    CROSS JOIN LATERAL (SELECT dolt.commit_seq(from_commit) AS f, dolt.commit_seq(to_commit) AS t OFFSET 0) q
    LEFT JOIN strata.commits fc ON fc.seq = q.f
    LEFT JOIN strata.commits tc ON tc.seq = q.t
    CROSS JOIN LATERAL strata.diff_rows(s.rel, s.tbl, s.key_columns, q.f, q.t) d
$$;

-- The tables each commit changed (Doltgres's dolt_diff system table).
CREATE OR REPLACE VIEW dolt.dolt_diff AS
  SELECT k.hash AS commit_hash, x.rel AS table_name, k.committer, k.email, k.date, k.message,
         x.data_change, x.schema_change
    FROM strata.commits k
   CROSS JOIN LATERAL (
     SELECT y.rel, bool_or(y.data) AS data_change, bool_or(NOT y.data) AS schema_change FROM (
       SELECT DISTINCT c.rel, true AS data FROM strata.changes c WHERE c.commit_seq = k.seq
       UNION ALL SELECT b.rel, true FROM strata.snapshot_bases b WHERE b.commit_seq = k.seq
       UNION ALL SELECT DISTINCT s.rel, false FROM strata.schema_changes s WHERE s.commit_seq = k.seq
     ) y GROUP BY y.rel
   ) x;

-- Strata's system variables (strata.dolt_* settings; the front door maps SHOW dolt_x and
-- current_setting('dolt_x') here). The defaults table serves stores whose configuration files
-- Strata does not write (store.url).
CREATE TABLE IF NOT EXISTS strata.setting_defaults (name text PRIMARY KEY, value text NOT NULL);
CREATE OR REPLACE FUNCTION dolt.setting(variable text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT coalesce(current_setting('strata.' || lower(variable), true),
                  (SELECT value FROM strata.setting_defaults WHERE name = 'strata.' || lower(variable)))
$$;

`;
