// The front door's rewriter (see rewrite.ts for what it changes): it answers the catalog questions
// a rewrite needs from the store (one small pool per database), and after an ALTER SYSTEM of a
// Strata variable reloads the store's configuration once the new value is in the file, so that
// new sessions see it without a restart.
import pg from "pg";
import { findVariable } from "../config/variables.ts";
import type { Logger } from "../log.ts";
import { RemoteService } from "../remotes/service.ts";
import type { StoreHandle } from "../store/store.ts";
import { findRemoteCall, mayCallRemote } from "./remote-call.ts";
import { type AlteredSetting, loadParser, mayRewrite, rewriteSql } from "./rewrite.ts";
import type { QueryRewriter, RewriteContext } from "./session.ts";

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;
/** How long the key parameters of a table's as-of function are remembered. */
const CATALOG_TTL_MS = 5_000;
/** Rewrites remembered (per database and SQL text; unnamed statements repeat). */
const REWRITE_CACHE_SIZE = 500;
/** How long an ALTER SYSTEM may take to reach postgresql.auto.conf before the reload is given up. */
const RELOAD_WAIT_MS = 10_000;

export class StrataRewriter implements QueryRewriter {
  private readonly pools = new Map<string, pg.Pool>();
  private readonly keyCache = new Map<string, { at: number; keys: string[] | undefined }>();
  /** Recent rewrites: they depend on the catalog (keys) only, so they live as long as its cache. */
  private readonly rewrites = new Map<string, { at: number; sql: string | undefined }>();
  private closed = false;

  readonly remotes: RemoteService;

  constructor(
    private readonly store: StoreHandle,
    private readonly log: Logger,
  ) {
    this.remotes = new RemoteService(store, log);
  }

  rewrite(sql: string, context: RewriteContext): Promise<string | undefined> | undefined {
    // A read replica pulls when a transaction starts (the session is idle before this statement).
    const status = context.session.txStatus;
    const pull =
      status === "T" || status === "E" ? undefined : this.remotes.beforeTransaction(context.database);
    const remoteCall = mayCallRemote(sql);
    if (!pull && !remoteCall && !mayRewrite(sql)) return undefined;
    return (pull ?? Promise.resolve()).then(() =>
      remoteCall ? this.rewriteRemoteCall(sql, context) : this.rewriteCandidate(sql, context),
    );
  }

  /** Only sessions of a database that pushes each commit before the client hears of it. */
  holdsTransactionEnds(context: { database: string }): boolean {
    return this.remotes.pushesBeforeCommitReturns(context.database);
  }

  /** After a transaction ended: a database that replicates to a remote pushes its new commits. */
  transactionEnded(context: { database: string }): Promise<void> | undefined {
    return this.remotes.afterTransaction(context.database);
  }

  private async rewriteRemoteCall(sql: string, context: RewriteContext): Promise<string | undefined> {
    await loadParser();
    const call = findRemoteCall(sql);
    if (!call) return this.rewriteCandidate(sql, context);
    return this.remotes.call(call.fn, call.args, context.database);
  }

  private async rewriteCandidate(sql: string, context: RewriteContext): Promise<string | undefined> {
    if (!mayRewrite(sql)) return undefined;
    const cacheKey = `${context.database}\u0000${sql}`;
    const cached = this.rewrites.get(cacheKey);
    if (cached && Date.now() - cached.at < CATALOG_TTL_MS) return cached.sql;
    const result = await rewriteSql(sql, {
      asOfKeys: (schema, table) => this.asOfKeys(context.database, schema, table),
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
    await Promise.all([...this.pools.values()].map((pool) => pool.end().catch(() => {})));
    this.pools.clear();
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
    this.keyCache.set(cacheKey, { at: Date.now(), keys });
    return keys;
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
