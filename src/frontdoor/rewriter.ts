// The front door's rewriter (see rewrite.ts for what it changes): it answers the catalog questions
// a rewrite needs from the store (one small pool per database), and after an ALTER SYSTEM of a
// Strata variable reloads the store's configuration once the new value is in the file, so that
// new sessions see it without a restart.
import pg from "pg";
import { BranchError, splitDatabaseName } from "../branches/names.ts";
import { BranchService } from "../branches/service.ts";
import { type ClusterController, ClusterError } from "../cluster/controller.ts";
import { findVariable } from "../config/variables.ts";
import type { Logger } from "../log.ts";
import { RemoteService } from "../remotes/service.ts";
import type { StoreHandle } from "../store/store.ts";
import { findRemoteCall, mayCallRemote } from "./remote-call.ts";
import {
  type AlteredSetting,
  AsOfError,
  DROP_DATABASE,
  droppedDatabases,
  loadParser,
  mayRewrite,
  rewriteSql,
} from "./rewrite.ts";
import type { QueryRewriter, RewriteContext } from "./session.ts";
import { codeMatches } from "./sql-text.ts";
import { encodeErrorResponse } from "./wire.ts";

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;
/** How long the key parameters of a table's as-of function are remembered. */
const CATALOG_TTL_MS = 5_000;
/** Rewrites remembered (per database and SQL text; unnamed statements repeat). */
const REWRITE_CACHE_SIZE = 500;
/** `USE db` / `USE "db/branch"` (Doltgres's, not Postgres's: read before the parser). */
// No two adjacent parts can match the same characters: linear time on any input (a pattern
// with `\s*;?\s*` took seconds on a long run of spaces, on the event loop every session shares).
const USE_STATEMENT = /^\s*use\s+(?:"((?:[^"]|"")+)"|([^\s;"]+))\s*(?:;\s*)?$/i;
/** A statement that reads dolt_branches: the other branches' heads are gathered first. */
const READS_BRANCHES = /dolt_branches/i;
/** How long an ALTER SYSTEM may take to reach postgresql.auto.conf before the reload is given up. */
const RELOAD_WAIT_MS = 10_000;

export class StrataRewriter implements QueryRewriter {
  private readonly pools = new Map<string, pg.Pool>();
  private readonly keyCache = new Map<string, { at: number; keys: string[] | undefined }>();
  private readonly asOfTableCache = new Map<string, { at: number }>();
  /** Recent rewrites: they depend on the catalog (keys) only, so they live as long as its cache. */
  private readonly rewrites = new Map<string, { at: number; sql: string | undefined }>();
  private closed = false;
  /** This server's cluster controller, when config.yaml has cluster:. */
  private cluster?: ClusterController;

  readonly remotes: RemoteService;
  readonly branches: BranchService;

  constructor(
    private readonly store: StoreHandle,
    private readonly log: Logger,
  ) {
    this.remotes = new RemoteService(store, log);
    this.branches = new BranchService(store, log, {
      release: async (database) => {
        const pool = this.pools.get(database);
        this.pools.delete(database);
        await pool?.end().catch(() => {});
        await this.remotes.release(database);
      },
      branchChanged: (database) => this.remotes.branchChanged(database),
      branchDeleted: (base, branch) => this.remotes.branchDeleted(base, branch),
    });
  }

  /** Serve the cluster calls, and refuse what a session may no longer do after a role change. */
  useCluster(cluster: ClusterController): void {
    this.cluster = cluster;
  }

  rewrite(sql: string, context: RewriteContext): Promise<string | undefined> | undefined {
    const refusal = this.cluster?.refusal(context.session, sql);
    if (refusal) throw refusal;
    // A read replica pulls when a transaction starts (the session is idle before this statement).
    const status = context.session.txStatus;
    const pull =
      status === "T" || status === "E" ? undefined : this.remotes.beforeTransaction(context.database);
    const remoteCall = mayCallRemote(sql);
    const use = USE_STATEMENT.exec(sql);
    const readsBranches = codeMatches(sql, READS_BRANCHES);
    // The front door's own idle connections to a database would make its DROP fail ("being
    // accessed by other users"): closed first.
    const dropping = codeMatches(sql, DROP_DATABASE)
      ? droppedDatabases(sql).then((names) => this.closePools(names))
      : undefined;
    if (!pull && !dropping && !remoteCall && !use && !readsBranches && !mayRewrite(sql)) return undefined;
    return Promise.all([pull, dropping]).then(async () => {
      if (use) return this.use(use[1]?.replace(/""/g, '"') ?? use[2], context);
      if (readsBranches) await this.branches.refreshHeads(context.database);
      return remoteCall ? this.rewriteRemoteCall(sql, context) : this.rewriteCandidate(sql, context);
    });
  }

  /** USE db or USE "db/branch": the session moves to that database (branch). */
  private async use(name: string, context: RewriteContext): Promise<string> {
    const { base, branch } = splitDatabaseName(name);
    await this.remotes.cloneOnFirstUse(base);
    const database = (await this.branches.branches(base)).get(branch);
    if (!database)
      throw new BranchError(
        branch === "main"
          ? `database "${base}" does not exist`
          : `database "${base}" has no branch "${branch}"`,
        "3D000",
        "SELECT * FROM dolt_branches lists a database's branches",
      );
    await this.moveSession(database, context);
    return "DO $$ BEGIN END $$";
  }

  /** Move the session to `database` once its statement is through (see Session.switchDatabase). */
  private async moveSession(database: string, context: RewriteContext): Promise<void> {
    if (database === context.database) return;
    if (context.session.txStatus !== "I")
      throw new BranchError(
        "cannot change branch or database inside a transaction block",
        "25001",
        "COMMIT or ROLLBACK first",
      );
    await context.session.switchDatabase(database, (user) => this.storedPassword(user));
  }

  /** A role's stored password (SCRAM secret or md5 hash), which repeating its login needs. */
  private async storedPassword(user: string): Promise<string | null> {
    const { rows } = await this.pool("postgres").query<{ rolpassword: string | null }>(
      "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
      [user],
    );
    return rows[0]?.rolpassword ?? null;
  }

  /** A read replica clones a database the primary made when a session first names it. */
  beforeSession(database: string): Promise<void> | undefined {
    return this.remotes.cloneOnFirstUse(database);
  }

  /** Only sessions of a database that pushes each commit before the client hears of it. */
  holdsTransactionEnds(context: { database: string }): boolean {
    return this.pushes() && this.remotes.pushesBeforeCommitReturns(context.database);
  }

  /** After a transaction ended: a database that replicates to a remote pushes its new commits. */
  transactionEnded(context: { database: string }): Promise<void> | undefined {
    return this.pushes() ? this.remotes.afterTransaction(context.database) : undefined;
  }

  /** On a server of a cluster that is not a writable primary, the store's read-only errors say why. */
  rewritesStoreErrors(): boolean {
    return this.cluster?.readOnlyHint() !== undefined;
  }

  /** A read-only error (25006) on a standby: Postgres's message, with Doltgres's detail and where writes go. */
  storeError(fields: Map<string, string>, context: { database: string }): Buffer | undefined {
    const hint = fields.get("C") === "25006" ? this.cluster?.readOnlyHint() : undefined;
    if (!hint) return undefined;
    return encodeErrorResponse({
      severity: fields.get("S") === "FATAL" ? "FATAL" : "ERROR",
      code: "25006",
      message: fields.get("M") ?? "cannot execute this statement in a read-only transaction",
      detail: fields.get("D") ?? `Database ${splitDatabaseName(context.database).base} is read-only.`,
      hint,
    });
  }

  /**
   * In a cluster only the primary pushes to remotes (a standby's commits are the primary's, which
   * it pushes itself); after a failover the new primary takes over.
   */
  private pushes(): boolean {
    return !this.cluster || this.cluster.role === "primary";
  }

  private async rewriteRemoteCall(sql: string, context: RewriteContext): Promise<string | undefined> {
    await loadParser();
    const call = findRemoteCall(sql);
    if (!call) return this.rewriteCandidate(sql, context);
    // SELECT fn(...) AS name: the one-column result, under that name.
    const named = (result: string) =>
      call.alias === undefined
        ? result
        : `SELECT * FROM (${result}) AS strata_call(${quoteIdent(call.alias)})`;
    if (call.kind === "remote") return named(await this.remotes.call(call.fn, call.args, context.database));
    if (call.kind === "cluster") return named(await this.clusterCall(call.fn, call.args, context));
    // A checkout is refused inside a transaction block before any branch is made for it.
    if (call.fn === "dolt_checkout" && context.session.txStatus !== "I") await this.moveSession("", context);
    const result = await this.branches.call(call.fn, call.args, context.database);
    if (result.switchTo) await this.moveSession(result.switchTo, context);
    return named(result.sql);
  }

  /** dolt_assume_cluster_role and dolt_cluster_transition_to_standby, with Dolt's results. */
  private async clusterCall(
    fn: "dolt_assume_cluster_role" | "dolt_cluster_transition_to_standby",
    args: string[],
    context: RewriteContext,
  ): Promise<string> {
    const cluster = this.cluster;
    if (!cluster)
      throw new ClusterError(
        `${fn} needs a cluster: this server has no cluster: section in its config.yaml`,
        "55000",
        "configure cluster.standby_remotes, bootstrap_role, bootstrap_epoch and remotesapi (see docs/cluster.md)",
      );
    const integer = (text: string | undefined, what: string) => {
      if (text === undefined || !/^\s*-?\d+\s*$/.test(text))
        throw new ClusterError(
          `${fn}: ${what} must be a whole number, got ${JSON.stringify(text ?? null)}`,
          "22023",
        );
      return Number(text);
    };
    if (fn === "dolt_assume_cluster_role") {
      if (args.length !== 2)
        throw new ClusterError(
          "dolt_assume_cluster_role takes a role and an epoch, e.g. SELECT dolt_assume_cluster_role('standby', 2)",
          "42883",
        );
      const result = await cluster.assumeRole(args[0], integer(args[1], "the epoch"), context.session);
      return `SELECT ${result}::int8 AS dolt_assume_cluster_role`;
    }
    if (args.length !== 2)
      throw new ClusterError(
        "dolt_cluster_transition_to_standby takes an epoch and the number of standbys that must be caught up (0: all), e.g. SELECT * FROM dolt_cluster_transition_to_standby(2, 1)",
        "42883",
      );
    const rows = await cluster.transitionToStandby(
      integer(args[0], "the epoch"),
      integer(args[1], "min_caught_up"),
      context.session,
    );
    const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;
    if (rows.length === 0)
      return "SELECT NULL::int4 AS caught_up, NULL::text AS database, NULL::text AS remote, NULL::text AS remote_url WHERE false";
    const values = rows
      .map(
        (r) =>
          `(${r.caught_up}::int4, ${literal(r.database)}, ${literal(r.remote)}, ${literal(r.remote_url)})`,
      )
      .join(", ");
    return `SELECT * FROM (VALUES ${values}) AS t(caught_up, database, remote, remote_url)`;
  }

  private async rewriteCandidate(sql: string, context: RewriteContext): Promise<string | undefined> {
    if (!mayRewrite(sql)) return undefined;
    const cacheKey = `${context.database}\u0000${sql}`;
    const cached = this.rewrites.get(cacheKey);
    if (cached && Date.now() - cached.at < CATALOG_TTL_MS) return cached.sql;
    const result = await rewriteSql(sql, {
      asOfKeys: (schema, table) => this.asOfKeys(context.database, schema, table),
      asOfUnavailable: (schema, table) => this.asOfUnavailable(context.database, schema, table),
    });
    if (result && result.altersSystem.length > 0) {
      // Not cached: each one must reload the configuration once written.
      void this.reloadWhenWritten(result.altersSystem);
      return result.sql;
    }
    if (this.rewrites.size >= REWRITE_CACHE_SIZE) this.rewrites.delete(this.rewrites.keys().next().value!);
    this.rewrites.set(cacheKey, { at: Date.now(), sql: result?.sql });
    return result?.sql;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.remotes.close();
    await this.branches.close();
    await Promise.all([...this.pools.values()].map((pool) => pool.end().catch(() => {})));
    this.pools.clear();
  }

  /** Close the pools of these databases and of their branches (`<database>/<branch>`). */
  private async closePools(databases: string[]): Promise<void> {
    const closing: Promise<void>[] = [];
    for (const [name, pool] of this.pools)
      if (databases.some((d) => name === d || name.startsWith(`${d}/`))) {
        this.pools.delete(name);
        closing.push(pool.end().catch(() => {}));
      }
    // The remotes' pooled connections too, and the settings' kept one if "postgres" is dropped.
    closing.push(this.remotes.releaseDropped(databases));
    await Promise.all(closing);
  }

  private pool(database: string): pg.Pool {
    let pool = this.pools.get(database);
    if (!pool) {
      pool = new pg.Pool({
        ...this.store.connectionConfig(database),
        application_name: "strata front door",
        max: 2,
        idleTimeoutMillis: 10_000,
      });
      pool.on("error", () => {}); // an idle connection the store closed: the next query opens another
      this.pools.set(database, pool);
    }
    return pool;
  }

  private async asOfKeys(
    database: string,
    schema: string | undefined,
    table: string,
  ): Promise<string[] | undefined> {
    const name = schema === undefined ? quoteIdent(table) : `${quoteIdent(schema)}.${quoteIdent(table)}`;
    const cacheKey = `${database}\u0000${name}`;
    const cached = this.keyCache.get(cacheKey);
    if (cached && Date.now() - cached.at < CATALOG_TTL_MS) return cached.keys;
    let keys: string[] | undefined;
    try {
      // The table as the query names it (search path included), and the key its history is kept under.
      const { rows } = await this.pool(database).query<{ keys: string[] }>(
        `SELECT s.key_columns AS keys FROM strata.table_surfaces s
           JOIN pg_class c ON c.relname = s.table_name JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schema_name
          WHERE c.oid = to_regclass($1) AND s.signature <> ''`,
        [name],
      );
      keys = rows[0]?.keys?.length ? rows[0].keys : undefined;
    } catch (err) {
      // Without the key the query still runs (as a whole-table as-of); say why it is slower.
      this.log.debug({ err: (err as Error).message, table: name }, "front door: cannot read the as-of key");
    }
    if (this.keyCache.size >= REWRITE_CACHE_SIZE) this.keyCache.delete(this.keyCache.keys().next().value!);
    this.keyCache.set(cacheKey, { at: Date.now(), keys });
    return keys;
  }

  /** Why a table named AS OF has no as-of function (undefined: it has one, or the catalog cannot say). */
  private async asOfUnavailable(
    database: string,
    schema: string | undefined,
    table: string,
  ): Promise<AsOfError | undefined> {
    const name = schema === undefined ? quoteIdent(table) : `${quoteIdent(schema)}.${quoteIdent(table)}`;
    const cacheKey = `${database}\u0000${name}`;
    const cached = this.asOfTableCache.get(cacheKey);
    if (cached && Date.now() - cached.at < CATALOG_TTL_MS) return undefined;
    let error: AsOfError | undefined;
    try {
      const { rows } = await this.pool(database).query<{
        found: boolean;
        root: string | null;
        surface: boolean;
        rel: string;
        recorded: boolean;
        kept: boolean;
      }>(
        `SELECT c.oid IS NOT NULL AS found,
                CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::regclass::text END AS root,
                EXISTS (SELECT 1 FROM strata.table_surfaces s JOIN pg_namespace n ON n.nspname = s.schema_name
                         WHERE n.oid = c.relnamespace AND s.table_name = c.relname AND s.signature <> '') AS surface,
                x.rel,
                EXISTS (SELECT 1 FROM strata.schema_changes WHERE rel = x.rel) AS recorded,
                EXISTS (SELECT 1 FROM strata.table_surfaces s
                         WHERE c.oid IS NULL AND s.rel = x.rel AND s.dropped_columns IS NOT NULL AND s.signature <> '') AS kept
           FROM (SELECT to_regclass($1) AS oid, coalesce($2, current_schema()) || '.' || $3 AS rel) x
           LEFT JOIN pg_class c ON c.oid = x.oid`,
        [name, schema ?? null, table],
      );
      const row = rows[0];
      if (row && !row.found && !row.kept)
        error = new AsOfError(
          `relation "${table}" does not exist`,
          "42P01",
          row.recorded
            ? `a dropped table is read AS OF only if it was committed, and its rows were recorded when it was dropped (not for a table copied by a snapshot or renamed, nor one dropped before 2026-11-24). Its recorded changes are in strata.changes (WHERE rel = '${row.rel}')`
            : undefined,
        );
      else if (row?.root)
        error = new AsOfError(
          `"${table}" is a partition of ${row.root}: its rows' history is ${row.root}'s`,
          "42809",
          `read it as SELECT ... FROM ${row.root} AS OF '...', with a WHERE on the partition's range`,
        );
      else if (row && !row.surface && !row.kept)
        error = new AsOfError(
          `table "${table}" has no history to read AS OF yet`,
          "55000",
          "AS OF reads committed history: commit the table first (SELECT dolt_commit('-Am', 'message')); on a replica, a table has history once it is copied",
        );
    } catch (err) {
      // The store answers the statement as it is, with its own error if it has one.
      this.log.debug(
        { err: (err as Error).message, table: name },
        "front door: cannot check the as-of table",
      );
    }
    // Only a readable table is remembered: one that was not may be committed the next moment.
    if (!error) {
      if (this.asOfTableCache.size >= REWRITE_CACHE_SIZE)
        this.asOfTableCache.delete(this.asOfTableCache.keys().next().value!);
      this.asOfTableCache.set(cacheKey, { at: Date.now() });
    }
    return error;
  }

  /** Reload the store's configuration once the ALTER SYSTEM a client sent has written its file. */
  private async reloadWhenWritten(settings: AlteredSetting[]): Promise<void> {
    const deadline = Date.now() + RELOAD_WAIT_MS;
    const pool = this.pool("postgres");
    try {
      while (!this.closed && Date.now() < deadline) {
        const { rows } = await pool.query<{ written: boolean }>(
          `SELECT bool_and(CASE WHEN s.value IS NULL THEN f.setting IS NULL ELSE f.setting = s.value END) AS written
             FROM jsonb_to_recordset($1::jsonb) AS s(name text, value text)
             LEFT JOIN pg_file_settings f ON f.name = s.name AND f.sourcefile LIKE '%postgresql.auto.conf'`,
          [JSON.stringify(settings)],
        );
        if (rows[0]?.written) {
          // Forgotten on both sides of the reload: no statement acts on a value read before it.
          this.remotes.settingsChanged();
          await pool.query("SELECT pg_reload_conf()");
          this.remotes.settingsChanged();
          // New sessions see the value now; what Strata itself reads at start waits for a restart.
          const atStart = settings
            .map((s) => findVariable(s.name.replace(/^strata\./, "")))
            .filter((v) => v?.readAt === "start")
            .map((v) => v!.name);
          this.log.info(
            { settings: settings.map((s) => s.name), takes_effect_at_restart: atStart },
            atStart.length > 0
              ? `ALTER SYSTEM: store configuration reloaded; ${atStart.join(", ")} take${atStart.length === 1 ? "s" : ""} effect when Strata restarts`
              : "ALTER SYSTEM: store configuration reloaded",
          );
          return;
        }
        await new Promise((resolveWait) => setTimeout(resolveWait, 50));
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "ALTER SYSTEM: cannot reload the store's configuration");
    }
  }
}
