// What the apply's fast paths rely on in a replica table, as one SQL expression.

/**
 * A replica table's shape (`tbl`: an SQL expression of type regclass): a hash of its columns and
 * their types, and the number of its row triggers that fire as a replica, partitions' included.
 * strata.replica_shape() is this expression (history/install.ts).
 */
export function replicaShapeSql(tbl: string): string {
  return `(SELECT md5(string_agg(concat_ws(' ', attnum, atttypid, atttypmod, attisdropped), ',' ORDER BY attnum))
            FROM pg_attribute WHERE attrelid = ${tbl} AND attnum > 0) || ':' ||
         (SELECT count(*) FROM pg_trigger
           WHERE (tgrelid = ${tbl} OR tgrelid IN (SELECT relid FROM pg_partition_tree(${tbl})))
             AND NOT tgisinternal AND tgenabled IN ('A', 'R') AND (tgtype & 1) = 1)`;
}
