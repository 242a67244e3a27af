// The replication system variables as Strata itself acts on them: the server's values (what a
// fresh store session reads), per database, cached so that statements do not wait on them.
// Sessions' own SET does not change what the server does. After an ALTER SYSTEM through the front
// door the cache is dropped, and for a moment every use reads afresh: a connection opened just
// before the store reloaded its configuration may still have read the old values.
import type pg from "pg";
import { connect } from "../db.ts";

/** How long a database's settings are trusted before being read again (in the background). */
export const SETTINGS_TTL_MS = 2_000;

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
  private readonly settings = new Map<string, { at: number; value: ReplicationSettings | null }>();
  private readonly refreshing = new Set<string>();
  private readonly reading = new Map<string, Promise<ReplicationSettings | null>>();
  private freshUntil = 0;

  constructor(private readonly config: (database: string) => pg.ClientConfig) {}

  /** Forget what was read of one database (it was just made: a read meanwhile saw it half-made). */
  forget(database: string): void {
    this.settings.delete(database);
  }

  /** Forget what was read (after ALTER SYSTEM). */
  changed(): void {
    this.settings.clear();
    this.reading.clear();
    this.freshUntil = Date.now() + SETTINGS_TTL_MS;
  }

  /**
   * The settings as last read, refreshed in the background once they are older than the TTL;
   * only a database's first use (or a use just after a change) waits for them. Null: not a
   * Strata database.
   */
  now(database: string): ReplicationSettings | null | Promise<ReplicationSettings | null> {
    const cached = this.settings.get(database);
    if (!cached || Date.now() < this.freshUntil) return this.read(database);
    if (Date.now() - cached.at >= SETTINGS_TTL_MS && !this.refreshing.has(database)) {
      this.refreshing.add(database);
      this.read(database)
        .catch(() => {})
        .finally(() => this.refreshing.delete(database));
    }
    return cached.value;
  }

  /** One read of a database's settings at a time, shared by whoever asks meanwhile. */
  private read(database: string): Promise<ReplicationSettings | null> {
    let reading = this.reading.get(database);
    if (!reading) {
      reading = this.readNow(database).finally(() => this.reading.delete(database));
      this.reading.set(database, reading);
    }
    return reading;
  }

  private async readNow(database: string): Promise<ReplicationSettings | null> {
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
    if (!answered) return this.settings.get(database)?.value ?? null;
    this.settings.set(database, { at: Date.now(), value });
    return value;
  }
}
