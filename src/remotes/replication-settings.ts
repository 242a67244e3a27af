// The replication system variables as Strata itself acts on them: the server's values (what a
// fresh store session reads), per database, cached so that statements do not wait on them.
// Sessions' own SET does not change what the server does.
//
// A database's values change only with the server's configuration (a reload, after ALTER SYSTEM
// or an edited file), an ALTER DATABASE / ALTER ROLE ... SET, or the database itself being made
// again. So instead of reading every database's values again every few seconds (a connection
// each: with many databases, an idle server kept the store busy opening them), one query on one
// kept connection reads a stamp of all of that, at most every SETTINGS_TTL_MS, and the values are
// read again only when it moves (a database's alone when only it was made or dropped). After an
// ALTER SYSTEM through the front door the cache is dropped, and for a moment every use reads
// afresh: a connection opened just before the store reloaded its configuration may still have
// read the old values.
import pg from "pg";
import { connect } from "../db.ts";

/** How often the server's stamp is read again (in the background), and the window after a change. */
export const SETTINGS_TTL_MS = 2_000;

/**
 * What a fresh session's settings depend on, server-wide: when the configuration was last loaded
 * and the per-database and per-role settings; and the databases by oid (one dropped and made
 * again under its name is another database).
 */
const SERVER_STAMP_SQL = `SELECT pg_conf_load_time()::text || '|' || coalesce((
    SELECT md5(string_agg(setdatabase::text || '/' || setrole::text || '/' || array_to_string(setconfig, chr(1)), chr(2)
                          ORDER BY setdatabase, setrole)) FROM pg_db_role_setting), '') AS stamp,
  ARRAY(SELECT oid::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname) AS oids,
  ARRAY(SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname) AS names`;

export interface ReplicationSettings {
  pushTo: string;
  pullFrom: string;
  heads: string;
  allHeads: boolean;
  async: boolean;
  skipErrors: boolean;
  urlTemplate: string;
}

export class ReplicationSettingsCache {
  private readonly settings = new Map<string, ReplicationSettings | null>();
  private readonly reading = new Map<string, Promise<ReplicationSettings | null>>();
  private freshUntil = 0;
  /** Moves whenever what was read is dropped: a read that started before does not cache its answer. */
  private generation = 0;
  /** The kept connection (a pool of one) to the maintenance database, for the stamp. */
  private admin: pg.Pool | undefined;
  private stamp: string | undefined;
  /** Each database's oid when its settings were last looked at. */
  private readonly oids = new Map<string, string>();
  private stampReadAt = 0;
  private stampReading: Promise<string[]> | undefined;

  constructor(private readonly config: (database: string) => pg.ClientConfig) {}

  /** Forget what was read of one database (it was just made: a read meanwhile saw it half-made). */
  forget(database: string): void {
    this.settings.delete(database);
    this.reading.delete(database);
    this.generation++;
  }

  /** Forget what was read (after ALTER SYSTEM). */
  changed(): void {
    this.dropReads();
    this.freshUntil = Date.now() + SETTINGS_TTL_MS;
  }

  private dropReads(): void {
    this.settings.clear();
    this.reading.clear();
    this.generation++;
  }

  /**
   * The settings as last read; only a database's first use (or a use just after a change) waits
   * for them. The server's stamp is checked in the background, and a moved stamp drops them all.
   * Null: not a Strata database.
   */
  now(database: string): ReplicationSettings | null | Promise<ReplicationSettings | null> {
    if (Date.now() - this.stampReadAt >= SETTINGS_TTL_MS) this.databases().catch(() => {});
    if (!this.settings.has(database) || Date.now() < this.freshUntil) return this.read(database);
    return this.settings.get(database) ?? null;
  }

  /**
   * The databases a client can connect to, read with the server's stamp (which drops the cached
   * settings if it moved): the background push's list, one query on the kept connection.
   */
  databases(): Promise<string[]> {
    if (!this.stampReading) {
      this.stampReadAt = Date.now();
      this.stampReading = this.readStamp().finally(() => {
        this.stampReading = undefined;
      });
    }
    return this.stampReading;
  }

  private async readStamp(): Promise<string[]> {
    if (!this.admin) {
      // "postgres", as every admin connection of Strata's: never a CREATE DATABASE's template, so
      // keeping a connection to it blocks nothing (release() ends it before a DROP DATABASE).
      this.admin = new pg.Pool({ ...this.config("postgres"), max: 1, idleTimeoutMillis: 10_000 });
      this.admin.on("error", () => {}); // an idle connection the store closed: the next read opens another
    }
    const { rows } = await this.admin.query<{ stamp: string; oids: string[]; names: string[] }>(
      SERVER_STAMP_SQL,
    );
    const { stamp, oids, names } = rows[0];
    // No window of fresh reads here (as after changed()): the stamp moves once this session has
    // reloaded the configuration, and the postmaster reloads before its sessions do, so reads
    // from now on see the new values; reads started earlier do not cache theirs (generation).
    if (stamp !== this.stamp) this.dropReads();
    this.stamp = stamp;
    const seen = new Set<string>();
    names.forEach((name, i) => {
      seen.add(name);
      if (this.oids.get(name) !== oids[i]) this.forget(name);
      this.oids.set(name, oids[i]);
    });
    for (const name of [...this.oids.keys()])
      if (!seen.has(name)) {
        this.oids.delete(name);
        this.forget(name);
      }
    return names;
  }

  /** The kept connection ends (`database` is about to be dropped or renamed, or Strata stops). */
  async release(database?: string): Promise<void> {
    if (database !== undefined && database !== "postgres") return;
    const admin = this.admin;
    this.admin = undefined;
    await admin?.end().catch(() => {});
  }

  /** One read of a database's settings at a time, shared by whoever asks meanwhile. */
  private read(database: string): Promise<ReplicationSettings | null> {
    let reading = this.reading.get(database);
    if (!reading) {
      const started = this.readNow(database, this.generation).finally(() => {
        if (this.reading.get(database) === started) this.reading.delete(database);
      });
      reading = started;
      this.reading.set(database, reading);
    }
    return reading;
  }

  private async readNow(database: string, generation: number): Promise<ReplicationSettings | null> {
    let value: ReplicationSettings | null = null;
    // Whether the store answered: a read that failed (the store restarting, a role change ending
    // connections) must not be taken for "not replicated" and cached as such.
    let answered = false;
    const client = await connect(this.config(database)).catch(() => null);
    if (client) {
      try {
        const { rows } = await client.query<Record<string, string | null>>(
          `SELECT dolt.setting('dolt_replicate_to_remote') AS push_to, dolt.setting('dolt_read_replica_remote') AS pull_from,
                  dolt.setting('dolt_replicate_heads') AS heads, dolt.setting('dolt_replicate_all_heads') AS all_heads,
                  dolt.setting('dolt_async_replication') AS async, dolt.setting('dolt_skip_replication_errors') AS skip,
                  dolt.setting('dolt_replication_remote_url_template') AS url_template`,
        );
        const r = rows[0] ?? {};
        value = {
          pushTo: r.push_to ?? "",
          pullFrom: r.pull_from ?? "",
          heads: r.heads ?? "",
          allHeads: r.all_heads === "1",
          async: r.async === "1",
          skipErrors: r.skip === "1",
          urlTemplate: r.url_template ?? "",
        };
        answered = true;
      } catch (err) {
        // Not a Strata database (no dolt schema, or no dolt.setting): nothing to replicate.
        const code = (err as { code?: string }).code;
        answered = code === "3F000" || code === "42883";
      } finally {
        await client.end().catch(() => {});
      }
    }
    if (!answered) return this.settings.get(database) ?? null;
    if (generation === this.generation) this.settings.set(database, value);
    return value;
  }
}
