// The hash that strata.changes' key index (changes_key, install.ts) is built on.

/**
 * SQL for the hash that strata.changes' key index (changes_key) is on. jsonb's own hash is
 * consistent with its equality (1.0 and 1.00 hash alike), so a lookup by a key built from typed
 * values finds the stored one. A query that wants the index says
 * `changesKeyHash("c.rel", "c.row_key") = changesKeyHash(rel, key)` beside its equality on both.
 */
export function changesKeyHash(rel: string, key: string): string {
  return `jsonb_hash_extended(${key}, hashtextextended(${rel}, 0))`;
}
