// Branches in the store (see names.ts: branch `b` of database `db` is the store database `db/b`).
// What one database can answer alone is here: its own branch name, and dolt_branches, whose rows
// for the other branches the front door gathers from their databases into strata.branch_heads
// whenever a statement names dolt_branches (the row of the branch itself is always read live).
// A read-only store (a hot standby's, or a cluster node's that is not a writable primary): there
// the front door writes them to a file in PGDATA instead (service.ts refreshHeads), which
// strata.branch_heads_now() reads.
// Making, switching and merging branches spans databases, so only the front door does it; the
// store's functions of those names say so.

export const BRANCH_SQL = `
CREATE OR REPLACE FUNCTION dolt.active_branch() RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN strpos(current_database(), '/') > 0
              THEN substr(current_database(), strpos(current_database(), '/') + 1) ELSE 'main' END
$$;

CREATE TABLE IF NOT EXISTS strata.branch_heads (
  name text PRIMARY KEY,
  hash text,
  latest_committer text,
  latest_committer_email text,
  latest_commit_date timestamptz,
  latest_commit_message text,
  dirty boolean NOT NULL DEFAULT false,
  seen_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE OR REPLACE FUNCTION strata.branch_heads_now()
RETURNS TABLE (name text, hash text, latest_committer text, latest_committer_email text,
               latest_commit_date timestamptz, latest_commit_message text, dirty boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  IF pg_is_in_recovery() OR current_setting('default_transaction_read_only') = 'on' THEN
    RETURN QUERY
      SELECT h.name, h.hash, h.committer, h.email, h.date, h.message, coalesce(h.dirty, false)
        FROM jsonb_to_recordset(coalesce(nullif(pg_read_file(
               'strata_branch_heads.' || md5(current_database()) || '.json', 0, 16777216, true), '')::jsonb, '[]'))
             AS h(name text, hash text, committer text, email text, date timestamptz, message text, dirty boolean);
  ELSE
    RETURN QUERY
      SELECT b.name, b.hash, b.latest_committer, b.latest_committer_email, b.latest_commit_date,
             b.latest_commit_message, b.dirty
        FROM strata.branch_heads b;
  END IF;
END
$fn$;
REVOKE ALL ON FUNCTION strata.branch_heads_now() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION strata.branch_heads_now() TO PUBLIC;

CREATE OR REPLACE VIEW dolt.dolt_branches AS
  WITH here AS (
    SELECT dolt.active_branch() AS name, c.hash, c.committer, c.email, c.date, c.message,
           EXISTS (SELECT 1 FROM strata.working_changes) OR EXISTS (SELECT 1 FROM strata.working_schema_changes) AS dirty
      FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT * FROM strata.commits ORDER BY seq DESC LIMIT 1) c ON true
  ), branches AS (
    SELECT name, hash, committer, email, date, message, dirty FROM here
    UNION ALL
    SELECT h.name, h.hash, h.latest_committer, h.latest_committer_email, h.latest_commit_date,
           h.latest_commit_message, h.dirty
      FROM strata.branch_heads_now() h WHERE h.name <> (SELECT name FROM here)
  )
  SELECT b.name, b.hash, b.committer AS latest_committer, b.email AS latest_committer_email,
         b.date AS latest_commit_date, b.message AS latest_commit_message,
         coalesce(r.remote, '') AS remote, coalesce(r.branch, '') AS branch, b.dirty
    FROM branches b
    LEFT JOIN LATERAL (SELECT remote, branch FROM strata.remote_branches rb
                        WHERE rb.branch = b.name ORDER BY remote LIMIT 1) r ON true
   ORDER BY b.name;

-- Branch operations span databases: through the front door they never reach these.
CREATE OR REPLACE FUNCTION strata.branch_needs_front_door(fn text) RETURNS text[]
LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION '% works across the branches'' databases, which only Strata can do', fn
    USING ERRCODE = '0A000',
          HINT = 'connect to Strata''s listener (the front door), not to the store directly; a branch b of database db is the database "db/b"';
END
$fn$;
CREATE OR REPLACE FUNCTION dolt.dolt_branch(VARIADIC args text[] DEFAULT '{}') RETURNS text[]
  LANGUAGE sql AS $$ SELECT strata.branch_needs_front_door('dolt_branch') $$;
CREATE OR REPLACE FUNCTION dolt.dolt_checkout(VARIADIC args text[] DEFAULT '{}') RETURNS text[]
  LANGUAGE sql AS $$ SELECT strata.branch_needs_front_door('dolt_checkout') $$;
CREATE OR REPLACE FUNCTION dolt.dolt_merge(VARIADIC args text[] DEFAULT '{}') RETURNS text[]
  LANGUAGE sql AS $$ SELECT strata.branch_needs_front_door('dolt_merge') $$;
`;
