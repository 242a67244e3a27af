// Columns added to a table after it entered history. History keeps each row image as it was
// written, so an image written before `ADD COLUMN w ... DEFAULT 7` has no w, and one written after
// has it, though no change moved any row from one to the other: PostgreSQL gives the rows that
// were there the default without rewriting them (pg_attribute.attmissingval). Read as they are,
// an as-of read before the column mixed the rows untouched since (read from the table: w = 7) with
// the rows changed since (their old images: no w), and a diff to a commit after it showed w
// missing from rows that had it.
//
// So every reader brings an image to the commit it stands for (strata.image_as_of): the columns
// added after that commit leave it (they did not exist then), and the columns added by then that it
// lacks get the value the rows got when the column was added. That value is recorded with the
// schema change's definition (`"fills": {"w": 7}`, as to_jsonb gives it, from attmissingval).
// A volatile default, an identity or a generated column is written into each row instead: a
// SQL-written database records that as every row's change (strata.record_altered in
// working-set-sql.ts); elsewhere the column stays null in the images that lack it. Where the
// columns came from is found in the recorded definitions: a column in one definition and not in
// the one before is added there, unless the schema change renamed it (column-renames-sql.ts). A
// table never altered this way pays a few probes.

export const COLUMN_ADDITIONS_SQL = `
CREATE INDEX IF NOT EXISTS schema_changes_rel ON strata.schema_changes (rel);

-- A column's fill: the value its rows got when it was added (NULL: none recorded), as an image
-- holds it.
CREATE OR REPLACE FUNCTION strata.column_fill(tbl oid, num int2) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  a record;
  v jsonb;
BEGIN
  SELECT attmissingval::text AS missing, format_type(atttypid, atttypmod) AS type INTO a
    FROM pg_attribute WHERE attrelid = tbl AND attnum = num AND atthasmissing;
  IF a.missing IS NULL THEN RETURN NULL; END IF;
  EXECUTE format('SELECT to_jsonb((%L::%s[])[1])', a.missing, a.type) INTO v;
  RETURN v;
END
$fn$;

-- The fills of tbl's columns (NULL: none).
CREATE OR REPLACE FUNCTION strata.column_fills(tbl oid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT jsonb_object_agg(a.attname, strata.column_fill(a.attrelid, a.attnum))
    FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.atthasmissing
$$;

-- When each column a table gained or lost after it entered history existed, under today's names,
-- made once per query (NULL: none): [{"n": name, "s": from commit_seq (null: the table's entry),
-- "d": until commit_seq (null: still there), "v": fill}, ...], by name and then s. A table's
-- entry (a copy, or the first definition recorded) and a definition after a drop start afresh:
-- their columns are the table's. Columns never added or dropped since have no entry.
CREATE OR REPLACE FUNCTION strata.column_additions(p_rel text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  r record;
  n text;
  today text;
  prev jsonb;
  names jsonb;
  renamed jsonb;
  spans jsonb := '{}'; -- today's name -> [[s, d, v], ...]
  st jsonb;
BEGIN
  -- One definition alone (the usual case: a table made and never altered, or copied) adds nothing.
  IF (SELECT count(*) FROM (SELECT 1 FROM strata.schema_changes s WHERE s.rel = p_rel AND s.definition IS NOT NULL LIMIT 2) x)
     + (SELECT count(*) FROM (SELECT 1 FROM strata.working_schema_changes w WHERE w.rel = p_rel AND w.definition IS NOT NULL LIMIT 2) y)
     + (SELECT count(*) FROM (SELECT 1 FROM strata.table_entries e WHERE e.rel = p_rel LIMIT 1) z) < 2 THEN
    RETURN NULL;
  END IF;
  st := strata.rename_stretches(p_rel);
  FOR r IN
    SELECT x.seq, x.ord, x.def, x.entry FROM (
      SELECT s.commit_seq AS seq, s.ord::bigint AS ord, s.definition AS def, false AS entry
        FROM strata.schema_changes s WHERE s.rel = p_rel AND s.definition IS NOT NULL
      UNION ALL
      SELECT 9223372036854775807, w.id, w.definition, false
        FROM strata.working_schema_changes w WHERE w.rel = p_rel AND w.definition IS NOT NULL
      UNION ALL
      SELECT e.commit_seq, -1, e.definition, true FROM strata.table_entries e WHERE e.rel = p_rel
    ) x ORDER BY x.seq, x.ord
  LOOP
    IF NOT r.def ? 'columns' THEN
      prev := NULL; -- dropped: a table made again under the name starts afresh
      CONTINUE;
    END IF;
    SELECT jsonb_agg(e ->> 'name') INTO names FROM jsonb_array_elements(r.def -> 'columns') e;
    renamed := coalesce(r.def -> 'renamed', '{}');
    FOR n IN SELECT jsonb_array_elements_text(names) UNION SELECT jsonb_array_elements_text(prev) LOOP
      -- Under the name it has today: the later renames, as an image written here takes them.
      today := (SELECT k FROM jsonb_object_keys(strata.image_at(st, r.seq, r.ord, jsonb_build_object(n, 0))) k LIMIT 1);
      CONTINUE WHEN today IS NULL; -- a name a later rename gave away
      IF prev IS NULL OR r.entry THEN
        -- A fresh start: a name with spans from before is there again from here.
        IF names ? n AND spans ? today AND (spans -> today -> -1 -> 1) <> 'null' THEN
          spans := jsonb_set(spans, ARRAY[today], (spans -> today) || jsonb_build_array(jsonb_build_array(r.seq, NULL, NULL)));
        END IF;
      ELSIF names ? n AND NOT prev ? n AND NOT EXISTS (SELECT 1 FROM jsonb_each_text(renamed) m WHERE m.value = n) THEN
        -- Added here. (A definition recorded before fills were: the table's own, if it still has one.)
        spans := jsonb_set(spans, ARRAY[today], coalesce(spans -> today, '[]')
                   || jsonb_build_array(jsonb_build_array(r.seq, NULL, CASE WHEN r.def ? 'fills' THEN r.def -> 'fills' -> n
                        ELSE (SELECT strata.column_fill(a.attrelid, a.attnum) FROM pg_attribute a
                               WHERE a.attrelid = strata.regclass_of(p_rel) AND a.attname = today AND NOT a.attisdropped) END)));
      ELSIF prev ? n AND NOT names ? n AND NOT renamed ? n THEN
        -- Dropped here: what it was since it came, or since the table's entry.
        spans := jsonb_set(spans, ARRAY[today], CASE
          WHEN spans ? today THEN jsonb_set(spans -> today, '{-1,1}', to_jsonb(r.seq))
          ELSE jsonb_build_array(jsonb_build_array(NULL, r.seq, NULL)) END);
      END IF;
    END LOOP;
    prev := names;
  END LOOP;
  IF spans = '{}' THEN RETURN NULL; END IF;
  RETURN (SELECT jsonb_agg(jsonb_build_object('n', e.key, 's', x.v -> 0, 'd', x.v -> 1, 'v', x.v -> 2) ORDER BY e.key, x.i)
            FROM jsonb_each(spans) e CROSS JOIN LATERAL jsonb_array_elements(e.value) WITH ORDINALITY AS x(v, i));
END
$fn$;

-- What bringing an image to commit at takes, worked out once per query: the fills of the columns
-- there then that are still there today (NULL: nothing to do for this table), and the columns
-- that were not there then or are gone today. A column gone today leaves every image: reads show
-- today's columns, and an image that kept a dropped column's value would not meet the same row
-- read from the table (a table without a key matches rows by their whole image).
CREATE OR REPLACE FUNCTION strata.fills_at(additions jsonb, at bigint) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  IF additions IS NULL THEN RETURN NULL; END IF; -- (PL/pgSQL: the usual case costs no planning)
  RETURN coalesce((
    SELECT jsonb_object_agg(g.n, g.v) FROM (
      SELECT x.e ->> 'n' AS n,
             (array_agg(x.e -> 'v') FILTER (WHERE coalesce((x.e ->> 's')::bigint <= at, true)
                                               AND coalesce(at < (x.e ->> 'd')::bigint, true)))[1] AS v,
             (array_agg(x.e -> 'd' ORDER BY x.i DESC))[1] AS last_d
        FROM jsonb_array_elements(additions) WITH ORDINALITY x(e, i) GROUP BY 1
    ) g WHERE coalesce(jsonb_typeof(g.v), 'null') <> 'null' AND coalesce(jsonb_typeof(g.last_d), 'null') = 'null'), '{}');
END
$fn$;

CREATE OR REPLACE FUNCTION strata.columns_absent_at(additions jsonb, at bigint) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  IF additions IS NULL THEN RETURN '{}'; END IF;
  RETURN (SELECT coalesce(array_agg(g.n), '{}') FROM (
    SELECT x.e ->> 'n' AS n,
           bool_or(coalesce((x.e ->> 's')::bigint <= at, true) AND coalesce(at < (x.e ->> 'd')::bigint, true)) AS there,
           (array_agg(x.e -> 'd' ORDER BY x.i DESC))[1] AS last_d
      FROM jsonb_array_elements(additions) WITH ORDINALITY x(e, i) GROUP BY 1
  ) g WHERE NOT g.there OR coalesce(jsonb_typeof(g.last_d), 'null') <> 'null');
END
$fn$;

-- An image brought to a commit (fills and absent from the two above): the columns that did not
-- exist then leave it, and those added by then that it lacks (it was written before them) get
-- their fills. Two jsonb operators per image, inlined; a table with nothing to do pays a test.
CREATE OR REPLACE FUNCTION strata.image_as_of(fills jsonb, absent text[], j jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN fills IS NULL OR j IS NULL THEN j ELSE (fills || j) - absent END
$$;
`;
