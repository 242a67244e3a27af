// Errors of the apply path, classified by what happens next (DESIGN "Examples to follow" 9):
// an ApplyError is definite for the data it names — the stream stops, shows it, keeps the slot,
// and retries until the user has fixed the cause; anything else is treated as transient.

export interface ApplyErrorContext {
  table?: string;
  /** The upstream relation oid of the table, when known (the table can then be held). */
  relid?: number;
  column?: string;
  lsn?: string;
}

export class ApplyError extends Error {
  override name = "ApplyError";
  constructor(
    readonly problem: string,
    readonly fix: string,
    readonly context: ApplyErrorContext = {},
  ) {
    super(`${problem}; fix: ${fix}`);
  }

  withContext(context: ApplyErrorContext): ApplyError {
    const merged = { ...this.context, ...context };
    const where = [
      merged.table && `table ${merged.table}`,
      merged.column && `column ${merged.column}`,
      merged.lsn && `upstream LSN ${merged.lsn}`,
    ]
      .filter(Boolean)
      .join(", ");
    const err = new ApplyError(this.problem, this.fix, merged);
    err.message = `${where ? `${where}: ` : ""}${this.problem}; fix: ${this.fix}`;
    return err;
  }
}

/** The store connection failed (not the data): retried as a whole session, blaming no table. */
export class StoreConnectionError extends Error {
  override name = "StoreConnectionError";
}

/** A replica table's columns or triggers changed while Strata applied to it: applied again. */
export class ReplicaTableChanged extends Error {
  override name = "ReplicaTableChanged";
}

function isTransient(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== "string") return true; // a broken connection, not a statement's error
  // connection exceptions, insufficient resources, operator intervention (shutdown, terminate),
  // serialization failures and deadlocks
  return /^(08|53|57P)/.test(code) || code === "40001" || code === "40P01";
}

/**
 * Turn a store error raised while applying a change into an ApplyError with the remedy, or into
 * a StoreConnectionError when it is the connection, not the change, that failed.
 */
export function explainStoreError(err: unknown, table: string): Error {
  if (err instanceof ApplyError || err instanceof ReplicaTableChanged || err instanceof StoreConnectionError)
    return err;
  // The replica table changed under the apply (strata.expect_replica_shape): not the change's
  // fault, nor the table's; the stream starts again and resolves the table anew.
  if ((err as { code?: unknown }).code === "SR001") return new ReplicaTableChanged((err as Error).message);
  if (isTransient(err))
    return new StoreConnectionError(
      `the store connection failed while applying to ${table}: ${(err as Error).message}`,
    );
  const e = err as { code?: string; message?: string; column?: string; constraint?: string; detail?: string };
  const message = e.message ?? String(err);
  const detail = e.detail ? ` (${e.detail})` : "";
  switch (e.code) {
    case "23505":
      return new ApplyError(
        `duplicate key on the replica: ${message}${detail}`,
        `remove the conflicting row from the replica table ${table} (it diverged from the primary), then replication resumes`,
        { table },
      );
    case "23502":
      return new ApplyError(
        `${message}${detail}`,
        `make the replica-only column ${e.column ?? "?"} nullable or give it a default`,
        { table, column: e.column },
      );
    case "23503":
    case "23514":
      return new ApplyError(
        `constraint violation on the replica: ${message}${detail}`,
        `drop or relax the replica-only constraint ${e.constraint ?? ""} on ${table}`,
        { table },
      );
    case "22P02":
    case "22003":
    case "22001":
    case "42804":
      return new ApplyError(
        `a value does not fit the replica column type: ${message}${detail}`,
        `alter the replica column to a type compatible with the primary's (e.g. a wider type)`,
        { table, column: e.column },
      );
    case "42P01":
    case "42703":
      return new ApplyError(
        `the replica table no longer matches: ${message}`,
        `recreate or alter the replica table ${table} to match the primary`,
        { table },
      );
    default:
      return new ApplyError(
        `applying a change to ${table} failed: ${message}${detail}`,
        "correct the replica table, then replication resumes",
        { table },
      );
  }
}
