// Column renames in history. strata.changes keeps each row image (and key) as it was written, under
// the column names of then: a commit's hash covers those images, and clones hold the same ones, so
// they are never rewritten. Instead, every schema change that renames columns says so in its
// recorded definition (`"renamed": {"old": "new", ...}`, all at once, so a swap is one entry),
// and readers bring an image to today's names by the renames recorded after it, composed into one
// map per stretch of history once per query (strata.rename_stretches):
//
//   image at (commit_seq, ord) ──map of its stretch (the later renames, composed)──▶ today's names
//
// A writer finds the renames a schema change made by attnum (a rename keeps its column's attnum):
// strata.column_names holds the names history last recorded, and strata.note_column_names
// compares them with the catalog. The definitions travel with history to clones, which rename
// their columns rather than drop and add them (remotes/remote-sql.ts, strata.apply_definition).
//
// Keys are images too: a key stored under an old name is found by probing each form the key had
// (strata.key_forms) and keeping the changes whose key, renamed to today's names, is the one
// asked for. Tables without renames read history as before (strata.has_renames is an index probe,
// and a NULL stretches value short-cuts the rest).

import { changesKeyHash } from "./key-hash.ts";

export const COLUMN_RENAMES_SQL = `
CREATE TABLE IF NOT EXISTS strata.column_names (
  relid oid NOT NULL,
  attnum int2 NOT NULL,
  name text NOT NULL,
  PRIMARY KEY (relid, attnum)
);
ALTER TABLE strata.schema_changes ADD COLUMN IF NOT EXISTS definition jsonb;
CREATE INDEX IF NOT EXISTS schema_changes_renames ON strata.schema_changes (rel) WHERE definition ? 'renamed';

-- names, each renamed as the map says.
CREATE OR REPLACE FUNCTION strata.renamed_names(names text[], renamed jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(array_agg(coalesce(renamed ->> n, n) ORDER BY o), '{}') FROM unnest(names) WITH ORDINALITY AS u(n, o)
$$;

-- The renames of tbl's columns since history last recorded their names ({"old": "new"}; NULL:
-- none, or no record yet).
CREATE OR REPLACE FUNCTION strata.pending_renames(tbl oid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT jsonb_object_agg(n.name, a.attname::text ORDER BY a.attnum)
    FROM strata.column_names n JOIN pg_attribute a ON a.attrelid = n.relid AND a.attnum = n.attnum
   WHERE n.relid = tbl AND NOT a.attisdropped AND a.attname <> n.name
$$;

-- Record tbl's column names as history's; returns the renames since the last record (as
-- strata.pending_renames). The key history keeps the table under is renamed with its columns.
CREATE OR REPLACE FUNCTION strata.note_column_names(tbl oid) RETURNS jsonb
LANGUAGE plpgsql AS $fn$
DECLARE
  renamed jsonb := strata.pending_renames(tbl);
BEGIN
  IF tbl IS NULL THEN RETURN NULL; END IF;
  -- Dropped columns, and tables gone since (an oid may be used again).
  DELETE FROM strata.column_names n
   WHERE (n.relid = tbl AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum = n.attnum AND NOT a.attisdropped))
      OR NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = n.relid);
  INSERT INTO strata.column_names (relid, attnum, name)
  SELECT tbl, a.attnum, a.attname FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
  ON CONFLICT (relid, attnum) DO UPDATE SET name = excluded.name WHERE column_names.name <> excluded.name;
  IF renamed IS NOT NULL THEN
    UPDATE strata.table_surfaces s SET key_columns = strata.renamed_names(s.key_columns, renamed)
     WHERE s.rel = (SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl);
  END IF;
  RETURN renamed;
END
$fn$;

-- Columns history has not recorded yet (a table new to history): recorded as they are now.
CREATE OR REPLACE FUNCTION strata.record_new_column_names(tbl oid) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO strata.column_names (relid, attnum, name)
  SELECT tbl, a.attnum, a.attname FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
  ON CONFLICT (relid, attnum) DO NOTHING
$$;

-- The definition a writer records for a schema change on tbl: the table's definition after it,
-- with the columns it renamed and its columns' fills.
CREATE OR REPLACE FUNCTION strata.recorded_definition(tbl oid) RETURNS jsonb
LANGUAGE plpgsql AS $fn$
DECLARE
  def jsonb := strata.table_definition(tbl);
  renamed jsonb := strata.note_column_names(tbl);
  fills jsonb := strata.column_fills(tbl);
BEGIN
  IF def IS NOT NULL AND renamed IS NOT NULL THEN
    def := def || jsonb_build_object('renamed', renamed);
  END IF;
  -- The values the rows got when columns were added (column-additions-sql.ts); {} says none, where
  -- a definition recorded before fills were has no key.
  IF def IS NOT NULL THEN
    def := def || jsonb_build_object('fills', coalesce(fills, '{}'));
  END IF;
  RETURN def;
END
$fn$;

-- The renames in a table's history, each where its schema change is (uncommitted ones last).
CREATE OR REPLACE FUNCTION strata.column_renames(p_rel text) RETURNS TABLE (commit_seq bigint, ord bigint, renamed jsonb)
LANGUAGE sql STABLE AS $$
  SELECT s.commit_seq, s.ord::bigint, s.definition -> 'renamed' FROM strata.schema_changes s
   WHERE s.rel = p_rel AND s.definition ? 'renamed'
  UNION ALL
  SELECT 9223372036854775807, w.id, w.definition -> 'renamed' FROM strata.working_schema_changes w
   WHERE w.rel = p_rel AND w.definition ? 'renamed'
$$;

CREATE OR REPLACE FUNCTION strata.has_renames(p_rel text) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT EXISTS (SELECT 1 FROM strata.column_renames(p_rel)) $$;

-- A table's history split where its columns were renamed, made once per query (NULL: never
-- renamed): [{"s": seq, "o": ord, "m": {...}, "f": [...], "t": [...]}, ...] in
-- history order, one per rename. Images written before the rename at (s, o) and after the one
-- before it take today's names by map m: the renames from there on, composed ({"then": "today"};
-- null for a name a later rename gave that was a dropped column's). f and t are m's names and
-- their images as arrays, for strata.renamed_fields.
CREATE OR REPLACE FUNCTION strata.rename_stretches(p_rel text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  r record;
  later jsonb := '{}';
  m jsonb;
  stretches jsonb;
BEGIN
  FOR r IN SELECT x.commit_seq, x.ord, x.renamed FROM strata.column_renames(p_rel) x ORDER BY x.commit_seq DESC, x.ord DESC LOOP
    SELECT coalesce(jsonb_object_agg(y.name, y.now), '{}') INTO m FROM (
      -- Columns this rename renamed, to the names the later renames give them.
      SELECT e.key AS name, coalesce(later -> (e.value #>> '{}'), e.value) AS now FROM jsonb_each(r.renamed) e
      UNION ALL
      -- Names it gave that were no column's before it: any value under them was a dropped column's.
      SELECT e.value #>> '{}', 'null'::jsonb FROM jsonb_each(r.renamed) e WHERE NOT r.renamed ? (e.value #>> '{}')
      UNION ALL
      -- Columns it left alone, as the later renames take them.
      SELECT l.key, l.value FROM jsonb_each(later) l
       WHERE NOT r.renamed ? l.key
         AND NOT EXISTS (SELECT 1 FROM jsonb_each_text(r.renamed) e WHERE e.value = l.key)
    ) y WHERE y.now <> to_jsonb(y.name);
    later := m;
    stretches := jsonb_build_array(jsonb_build_object(
      's', r.commit_seq, 'o', r.ord, 'm', m,
      'f', (SELECT coalesce(jsonb_agg(e.key ORDER BY e.key), '[]') FROM jsonb_each(m) e),
      't', (SELECT coalesce(jsonb_agg(e.value ORDER BY e.key), '[]') FROM jsonb_each(m) e))
    ) || coalesce(stretches, '[]');
  END LOOP;
  RETURN stretches;
END
$fn$;

-- The map that brings an image written at (seq, ord) to today's names (NULL: none needed).
CREATE OR REPLACE FUNCTION strata.map_at(stretches jsonb, seq bigint, ord bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT e.v -> 'm' FROM jsonb_array_elements(stretches) WITH ORDINALITY AS e(v, i)
   WHERE ((e.v ->> 's')::bigint, (e.v ->> 'o')::bigint) > (seq, ord) ORDER BY e.i LIMIT 1
$$;

-- j with its fields renamed all at once: every name in names goes, then each present in j comes
-- back under its image in images (a null image: it stays out). Expressions only, no query: it
-- runs per image or key a read meets, so it is kept to a few microseconds.
CREATE OR REPLACE FUNCTION strata.renamed_fields(j jsonb, names jsonb, images jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
  renamed jsonb := j;
BEGIN
  FOR n IN 0 .. jsonb_array_length(names) - 1 LOOP
    IF jsonb_typeof(names -> n) = 'string' THEN
      renamed := renamed - (names ->> n);
    END IF;
  END LOOP;
  FOR n IN 0 .. jsonb_array_length(names) - 1 LOOP
    IF jsonb_typeof(names -> n) = 'string' AND jsonb_typeof(images -> n) = 'string' AND j ? (names ->> n) THEN
      renamed := renamed || jsonb_build_object(images ->> n, j -> (names ->> n));
    END IF;
  END LOOP;
  RETURN renamed;
END
$fn$;

-- An image written before a rename, under today's names: by the map of its stretch.
CREATE OR REPLACE FUNCTION strata.image_renamed(stretches jsonb, seq bigint, ord bigint, j jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
  s jsonb;
BEGIN
  FOR i IN 0 .. jsonb_array_length(stretches) - 1 LOOP
    s := stretches -> i;
    IF (seq, ord) < ((s ->> 's')::bigint, (s ->> 'o')::bigint) THEN
      RETURN strata.renamed_fields(j, s -> 'f', s -> 't');
    END IF;
  END LOOP;
  RETURN j;
END
$fn$;

-- An image (or key) written at (seq, ord), under today's names. (Inlined where it is used: an
-- image written since the last rename, the usual one, costs a comparison.)
CREATE OR REPLACE FUNCTION strata.image_at(stretches jsonb, seq bigint, ord bigint, j jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN stretches IS NULL OR j IS NULL
                   OR (seq, ord) > ((stretches -> -1 ->> 's')::bigint, (stretches -> -1 ->> 'o')::bigint) THEN j
              ELSE strata.image_renamed(stretches, seq, ord, j) END
$$;

-- Column names as of (seq, ord), under today's names.
CREATE OR REPLACE FUNCTION strata.names_now(p_rel text, seq bigint, ord bigint, names text[]) RETURNS text[]
LANGUAGE sql STABLE AS $$
  SELECT strata.renamed_names(names, strata.map_at(strata.rename_stretches(p_rel), seq, ord))
$$;

-- Key k (today's names) in each form history may hold it in: under the names of each stretch
-- (each stretch's map, backwards).
CREATE OR REPLACE FUNCTION strata.key_forms(stretches jsonb, k jsonb) RETURNS jsonb[]
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
  forms jsonb[] := ARRAY[k];
  f jsonb;
BEGIN
  FOR i IN 0 .. coalesce(jsonb_array_length(stretches), 0) - 1 LOOP
    f := strata.renamed_fields(k, stretches -> i -> 't', stretches -> i -> 'f');
    IF NOT f = ANY (forms) THEN
      forms := forms || f;
    END IF;
  END LOOP;
  RETURN forms;
END
$fn$;

-- The changes of a table with renames that find a row under key k (today's names) or move one
-- away from it (moved_away), after commit lo and up to hi: index probes of each form of the key,
-- keeping the changes whose key, under today's names, is k. (OFFSET 0 keeps each probe a lookup
-- by that form, made per form, rather than a join the planner may turn into a scan.)
CREATE OR REPLACE FUNCTION strata.key_mentions(p_rel text, stretches jsonb, k jsonb, lo bigint, hi bigint)
RETURNS TABLE (commit_seq bigint, ord bigint, op "char", old_key jsonb, old_row jsonb, moved_away boolean)
LANGUAGE sql STABLE AS $$
  SELECT c.commit_seq, c.ord, c.op, c.old_key, c.old_row, false
    FROM unnest(strata.key_forms(stretches, k)) f(f)
    CROSS JOIN LATERAL (
      SELECT c.* FROM strata.changes_and_working c
       WHERE ${changesKeyHash("c.rel", "c.row_key")} = ${changesKeyHash("p_rel", "f.f")}
         AND c.rel = p_rel AND c.row_key = f.f AND c.commit_seq > lo AND c.commit_seq <= hi
      OFFSET 0) c
   WHERE strata.image_at(stretches, c.commit_seq, c.ord, c.row_key) = k
  UNION ALL
  SELECT c.commit_seq, c.ord, c.op, c.old_key, c.old_row, true
    FROM unnest(strata.key_forms(stretches, k)) f(f)
    CROSS JOIN LATERAL (
      SELECT c.* FROM strata.changes_and_working c
       WHERE c.rel = p_rel AND c.old_key = f.f AND c.commit_seq > lo AND c.commit_seq <= hi
      OFFSET 0) c
   WHERE strata.image_at(stretches, c.commit_seq, c.ord, c.old_key) = k
$$;
`;
