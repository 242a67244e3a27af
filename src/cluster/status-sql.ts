// dolt_cluster.dolt_cluster_status, installed in every database: one row per database and standby
// remote, read from the status file the cluster controller rewrites every heartbeat in PGDATA
// (controller.ts writeStatus). A file, not a table: a standby's store is read-only, and the
// figures change every second. No rows without a cluster: (no file).
export const CLUSTER_STATUS_SQL = `
CREATE SCHEMA IF NOT EXISTS dolt_cluster;
CREATE OR REPLACE FUNCTION dolt_cluster.status_document() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT nullif(pg_read_file('strata_cluster_status.json', 0, 1048576, true), '')::jsonb
$$;
REVOKE ALL ON FUNCTION dolt_cluster.status_document() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dolt_cluster.status_document() TO PUBLIC;
GRANT USAGE ON SCHEMA dolt_cluster TO PUBLIC;
CREATE OR REPLACE VIEW dolt_cluster.dolt_cluster_status AS
  SELECT d.datname::text AS database,
         r->>'standby_remote' AS standby_remote,
         s->>'role' AS role,
         (s->>'epoch')::int8 AS epoch,
         (r->>'replication_lag_millis')::int8 AS replication_lag_millis,
         (r->>'last_update')::timestamptz AS last_update,
         r->>'current_error' AS current_error
    FROM (SELECT dolt_cluster.status_document() AS s) AS doc
    CROSS JOIN LATERAL jsonb_array_elements(doc.s->'remotes') AS r
    CROSS JOIN pg_database AS d
   WHERE doc.s IS NOT NULL AND NOT d.datistemplate AND d.datallowconn AND strpos(d.datname, '/') = 0
   ORDER BY 1, 2;
GRANT SELECT ON dolt_cluster.dolt_cluster_status TO PUBLIC;
`;
