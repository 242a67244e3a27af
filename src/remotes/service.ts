// Remotes as the front door serves them: the SQL calls that need the network (dolt_push,
// dolt_pull, dolt_fetch, dolt_clone), and replication through a remote, as the system variables
// configure it per database:
//
//   dolt_replicate_to_remote = 'origin'   push the head after every transaction that ends
//                                         (before the client hears it ended, unless
//                                         dolt_async_replication = 1), and every second for
//                                         commits made elsewhere (replicated from upstream)
//   dolt_read_replica_remote = 'origin'   pull when a transaction starts, for the branches
//   + dolt_replicate_heads / _all_heads   named (only main exists yet)
//
// Operations on one database run one at a time (a queue per database), so a push never races
// another push from this server, and a pull never applies the same commits twice.
import pg from "pg";
import { connect } from "../db.ts";
import type { Logger } from "../log.ts";
import type { StoreHandle } from "../store/store.ts";
import { RemoteOperationError } from "./pack-objects.ts";
import { fetchBranch, pullBranch } from "./pull.ts";
import { pushBranch } from "./push.ts";
import {
  type ReplicationSettings,
  ReplicationSettingsCache,
  SETTINGS_TTL_MS,
} from "./replication-settings.ts";
import { openRemoteStorage } from "./storage.ts";
import { pullTags, pushTags } from "./tags.ts";
import { remoteUrlTemplate } from "./url.ts";

const DEFAULT_BRANCH = "main";

export type RemoteCall = "dolt_push" | "dolt_pull" | "dolt_fetch" | "dolt_clone";

export class RemoteService {
  private readonly queues = new Map<string, Promise<unknown>>();
  private readonly settings: ReplicationSettingsCache;
  private readonly warned = new Set<string>();
  /** The head each database last had in each remote it replicates to (pushed or up to date). */
  private readonly pushedHead = new Map<string, string>();
  private readonly pools = new Map<string, pg.Pool>();
  /** Per database, the read replica's pull that has not started yet. */
  private readonly waitingPulls = new Map<string, Promise<void>>();
  private readonly remoteKnown = new Map<string, { at: number; value: boolean }>();

  constructor(
    private readonly store: StoreHandle,
    private readonly log: Logger,
  ) {
    this.settings = new ReplicationSettingsCache((database) => this.config(database));
  }

  /** Forget cached settings (after ALTER SYSTEM). */
  settingsChanged(): void {
    this.settings.changed();
    this.remoteKnown.clear();
  }

  /** Run a call; returns the SQL whose result the client gets. */
  async call(fn: RemoteCall, args: string[], database: string): Promise<string> {
    switch (fn) {
      case "dolt_clone":
        return this.clone(args);
      case "dolt_push": {
        const { flags, positional } = splitFlags(args, ["--force", "-f", "--set-upstream", "-u"]);
        const [remote = "origin", branch = DEFAULT_BRANCH] = positional;
        checkBranch(branch);
        const { result, tags } = await this.withRemote(database, remote, async (client, storage) => {
          const pushed = await pushBranch({
            client,
            storage,
            remote,
            branch,
            force: flags.has("--force") || flags.has("-f"),
          });
          return { result: pushed, tags: await pushTags(client, storage, remote, this.log) };
        });
        const tagNote = tags ? ` and ${tags} tag${tags === 1 ? "" : "s"}` : "";
        const message =
          result.status === "up-to-date" && !tags
            ? "Everything up-to-date"
            : `pushed ${result.commits} commit${result.commits === 1 ? "" : "s"}${tagNote} to ${remote}/${branch} (${result.head})`;
        return resultRow(fn, message);
      }
      case "dolt_pull": {
        const { positional } = splitFlags(args, []);
        const [remote = "origin", branch = DEFAULT_BRANCH] = positional;
        checkBranch(branch);
        const result = await this.withRemote(database, remote, async (client, storage) => {
          const pulled = await pullBranch({ client, storage, remote, branch });
          await pullTags(client, storage, remote);
          return pulled;
        });
        const message =
          result.status === "up-to-date"
            ? "Everything up-to-date"
            : `fast-forward: ${result.commits} commit${result.commits === 1 ? "" : "s"} from ${remote}/${branch} (${result.head})`;
        return resultRow(fn, message);
      }
      case "dolt_fetch": {
        const { positional } = splitFlags(args, []);
        const [remote = "origin", branch = DEFAULT_BRANCH] = positional;
        checkBranch(branch);
        const ref = await this.withRemote(database, remote, (client, storage) =>
          fetchBranch({ client, storage, remote, branch }),
        );
        return resultRow(fn, `${remote}/${branch} is at ${ref.commit}`);
      }
    }
  }

  /**
   * Before a transaction starts on `database`: pull, if it is a read replica. Returns undefined
   * when there is nothing to do (decided without waiting, once the settings are cached).
   */
  beforeTransaction(database: string): Promise<void> | undefined {
    const known = this.settings.now(database);
    if (known instanceof Promise)
      return known.then((s) => (s?.pullFrom ? this.pullForRead(database, s) : undefined));
    return known?.pullFrom ? this.pullForRead(database, known) : undefined;
  }

  /**
   * Whether the end of a transaction on `database` waits for a push (dolt_replicate_to_remote set,
   * dolt_async_replication off). Answered from the cached settings; true while they are unknown.
   * The others' commits go with the background push, within a second.
   */
  pushesBeforeCommitReturns(database: string): boolean {
    const known = this.settings.now(database);
    if (known instanceof Promise) {
      known.catch(() => {});
      return true;
    }
    return Boolean(known?.pushTo) && !known?.async;
  }

  /** After a transaction ended on `database`: push, if it replicates to a remote. */
  afterTransaction(database: string): Promise<void> | undefined {
    const push = (s: ReplicationSettings | null) => {
      if (!s?.pushTo) return undefined;
      const pushed = this.pushForReplication(database, s);
      if (!s.async) return pushed;
      pushed.catch(() => {}); // logged where it failed
      return undefined;
    };
    const known = this.settings.now(database);
    return known instanceof Promise ? known.then(push) : push(known);
  }

  /**
   * Every second, push the databases that replicate to a remote: commits made where no session
   * of the front door ends a transaction (replicated from upstream, or written on the store
   * directly) reach the remote too.
   */
  startBackgroundPush(intervalMs = 1_000): { stop(): Promise<void> } {
    let stopped = false;
    let running: Promise<void> = Promise.resolve();
    const tick = async () => {
      const admin = await connect(this.config("postgres"));
      let databases: string[];
      try {
        const { rows } = await admin.query<{ datname: string }>(
          "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate",
        );
        databases = rows.map((r) => r.datname);
      } finally {
        await admin.end().catch(() => {});
      }
      for (const database of databases) {
        if (stopped) return;
        const known = this.settings.now(database);
        const s = known instanceof Promise ? await known : known;
        if (s?.pushTo) await this.pushForReplication(database, s).catch(() => {}); // logged there
      }
    };
    const timer = setInterval(() => {
      running = running.then(() => (stopped ? undefined : tick().catch(() => {})));
    }, intervalMs);
    timer.unref();
    return {
      stop: async () => {
        stopped = true;
        clearInterval(timer);
        await running;
      },
    };
  }

  private async pushForReplication(database: string, s: ReplicationSettings): Promise<void> {
    if (!(await this.hasRemote(database, s.pushTo, s.urlTemplate))) return;
    if (!(await this.hasUnpushed(database, s.pushTo))) return;
    try {
      const result = await this.withRemote(database, s.pushTo, async (client, storage) => {
        const pushed = await pushBranch({ client, storage, remote: s.pushTo, branch: DEFAULT_BRANCH });
        await pushTags(client, storage, s.pushTo, this.log);
        return pushed;
      });
      this.pushedHead.set(`${database}\u0000${s.pushTo}`, result.head);
      if (result.status === "pushed")
        this.log.debug({ database, remote: s.pushTo, commits: result.commits, head: result.head }, "pushed");
    } catch (err) {
      this.log.warn({ database, remote: s.pushTo, err: (err as Error).message }, "replication push failed");
      if (!s.skipErrors) throw err;
    }
  }

  /**
   * Whether the database has a commit or a tag the remote has not had from this server: one
   * small query on a pooled connection, so that the transactions that commit nothing (most of
   * them) do not wait on the remote.
   */
  private async hasUnpushed(database: string, remote: string): Promise<boolean> {
    const { rows } = await this.pool(database).query<{ head: string | null; tags: boolean }>(
      `SELECT (SELECT hash FROM strata.commits ORDER BY seq DESC LIMIT 1) AS head,
              EXISTS (SELECT 1 FROM strata.tags t WHERE NOT EXISTS (
                SELECT 1 FROM strata.remote_tags r WHERE r.remote = $1 AND r.name = t.name AND r.commit_hash = t.commit_hash)) AS tags`,
      [remote],
    );
    const head = rows[0]?.head ?? null;
    return head !== null && (rows[0].tags || head !== this.pushedHead.get(`${database}\u0000${remote}`));
  }

  private pool(database: string): pg.Pool {
    let pool = this.pools.get(database);
    if (!pool) {
      pool = new pg.Pool({ ...this.config(database), max: 2, idleTimeoutMillis: 10_000 });
      pool.on("error", () => {}); // an idle connection the store closed: the next query opens another
      this.pools.set(database, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((pool) => pool.end().catch(() => {})));
    this.pools.clear();
  }

  private async pullForRead(database: string, s: ReplicationSettings): Promise<void> {
    if (s.heads && s.allHeads) {
      this.warnOnce(
        `${database}:heads`,
        { database },
        "dolt_replicate_heads and dolt_replicate_all_heads are both set: only one may be; not pulling",
      );
      return;
    }
    const heads = s.allHeads
      ? [DEFAULT_BRANCH]
      : s.heads
          .split(",")
          .map((h) => h.trim())
          .filter(Boolean);
    if (heads.length === 0) {
      this.warnOnce(
        `${database}:noheads`,
        { database },
        "dolt_read_replica_remote is set but neither dolt_replicate_heads nor dolt_replicate_all_heads: not pulling",
      );
      return;
    }
    if (!heads.some((h) => globMatches(h, DEFAULT_BRANCH))) return;
    if (!(await this.hasRemote(database, s.pullFrom))) return;
    // Transactions that start while a pull waits its turn share it: it reads the remote after
    // they asked. Once it has started, later ones wait for the next.
    let waiting = this.waitingPulls.get(database);
    if (!waiting) {
      const pull = this.withRemote(database, s.pullFrom, async (client, storage) => {
        if (this.waitingPulls.get(database) === pull) this.waitingPulls.delete(database);
        await pullBranch({ client, storage, remote: s.pullFrom, branch: DEFAULT_BRANCH });
        // Tags come with "all heads" (the reference: all branches and tags).
        if (s.allHeads) await pullTags(client, storage, s.pullFrom);
      });
      waiting = pull;
      this.waitingPulls.set(database, pull);
      pull
        .catch(() => {}) // each waiter handles it below
        .finally(() => {
          if (this.waitingPulls.get(database) === pull) this.waitingPulls.delete(database);
        });
    }
    try {
      await waiting;
    } catch (err) {
      if (s.skipErrors) {
        this.log.warn(
          { database, remote: s.pullFrom, err: (err as Error).message },
          "replication pull failed",
        );
        return;
      }
      throw err;
    }
  }

  /**
   * Whether the database has the remote its replication setting names. The settings are the
   * server's, its databases each have their own remotes: one without it gets it from
   * dolt_replication_remote_url_template when that is set (a primary's new databases), else it
   * is left alone (and the log says so once), so that its queries keep working.
   */
  private async hasRemote(database: string, remote: string, urlTemplate = ""): Promise<boolean> {
    const cached = this.remoteKnown.get(`${database}\u0000${remote}`);
    if (cached && Date.now() - cached.at < SETTINGS_TTL_MS) return cached.value;
    let value = false;
    const client = await connect(this.config(database)).catch(() => null);
    if (client) {
      try {
        value =
          ((await client.query("SELECT 1 FROM strata.remotes WHERE name = $1", [remote])).rowCount ?? 0) > 0;
        if (!value && urlTemplate) {
          const url = remoteUrlTemplate(urlTemplate, database);
          await client.query("SELECT dolt.dolt_remote('add', $1, $2)", [remote, url]);
          this.log.info({ database, remote, url }, "remote added from dolt_replication_remote_url_template");
          value = true;
        }
      } catch (err) {
        this.log.warn(
          { database, remote, err: (err as Error).message },
          "cannot read or add the database's remote",
        );
      } finally {
        await client.end().catch(() => {});
      }
    }
    this.remoteKnown.set(`${database}\u0000${remote}`, { at: Date.now(), value });
    if (!value)
      this.warnOnce(
        `${database}:${remote}`,
        { database, remote },
        `database "${database}" has no remote "${remote}" (named by a replication setting): it is not replicated; add it with dolt_remote('add', '${remote}', url)`,
      );
    return value;
  }

  private warnOnce(key: string, fields: Record<string, unknown>, message: string) {
    if (this.warned.has(key)) return;
    this.warned.add(key);
    this.log.warn(fields, message);
  }

  /** Run `work` on `database`'s queue with a connection to it and the named remote's storage. */
  private withRemote<T>(
    database: string,
    remote: string,
    work: (client: pg.Client, storage: ReturnType<typeof openRemoteStorage>) => Promise<T>,
  ): Promise<T> {
    const run = async () => {
      const client = await this.pool(database).connect();
      let broken: Error | undefined;
      try {
        const { rows } = await client.query<{ url: string }>(
          "SELECT url FROM strata.remotes WHERE name = $1",
          [remote],
        );
        if (!rows[0])
          throw new RemoteOperationError(
            `database "${database}" has no remote named "${remote}"`,
            "42704",
            `add it: SELECT dolt_remote('add', '${remote}', 'file:///path/to/remote')`,
          );
        return await work(client, openRemoteStorage(rows[0].url));
      } catch (err) {
        // A connection left mid-COPY or mid-transaction is not given back for reuse.
        broken = (err as { code?: unknown }).code === undefined ? (err as Error) : undefined;
        throw err;
      } finally {
        client.release(broken);
      }
    };
    const previous = this.queues.get(database) ?? Promise.resolve();
    const next = previous.then(run, run);
    const settled = next.then(
      () => {},
      () => {},
    );
    this.queues.set(database, settled);
    settled.then(() => {
      if (this.queues.get(database) === settled) this.queues.delete(database);
    });
    return next;
  }

  private config(database: string): pg.ClientConfig {
    return { ...this.store.connectionConfig(database), application_name: "strata remotes" };
  }

  /** dolt_clone(url[, name]) / ('--branch', 'main', url[, name]): a new database from a remote. */
  private async clone(args: string[]): Promise<string> {
    const { positional, values } = splitFlags(args, [], ["--branch", "-b", "--remote"]);
    const [url, named] = positional;
    if (!url)
      throw new RemoteOperationError(
        "dolt_clone needs the remote's URL",
        "22023",
        "SELECT dolt_clone('file:///path/to/remote', 'database_name')",
      );
    const branch = values.get("--branch") ?? values.get("-b") ?? DEFAULT_BRANCH;
    checkBranch(branch);
    const remote = values.get("--remote") ?? "origin";
    const storage = openRemoteStorage(url);
    const name = named ?? url.replace(/\/+$/, "").split("/").pop() ?? "";
    if (!/^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/.test(name))
      throw new RemoteOperationError(
        `dolt_clone: "${name}" is not a usable database name`,
        "22023",
        "name the database: SELECT dolt_clone('url', 'name')",
      );
    const admin = await connect(this.config("postgres"));
    try {
      const exists = await admin.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]);
      if (exists.rowCount)
        throw new RemoteOperationError(
          `dolt_clone: database "${name}" already exists`,
          "42P04",
          "clone under another name: SELECT dolt_clone('url', 'other_name')",
        );
      // Checked before the database is made: a clone of nothing leaves nothing behind.
      if (!(await storage.readRef(`heads/${branch}`)))
        throw new RemoteOperationError(
          `dolt_clone: ${url} has no branch "${branch}"`,
          "42704",
          "check the URL; a primary pushes there with dolt_push or dolt_replicate_to_remote",
        );
      await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
    } finally {
      await admin.end().catch(() => {});
    }
    try {
      const client = await connect(this.config(name));
      try {
        await client.query("INSERT INTO strata.remotes (name, url) VALUES ($1, $2)", [remote, url]);
        const result = await pullBranch({ client, storage, remote, branch, fresh: true });
        await pullTags(client, storage, remote);
        this.log.info(
          {
            database: name,
            url,
            commits: result.commits,
            from_snapshot: result.loaded ?? 0,
            head: result.head,
          },
          "cloned",
        );
      } finally {
        await client.end().catch(() => {});
      }
    } catch (err) {
      const admin2 = await connect(this.config("postgres"));
      await admin2.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`).catch(() => {});
      await admin2.end().catch(() => {});
      throw err;
    }
    return resultRow("dolt_clone", `cloned ${url} into database ${name}`);
  }
}

function resultRow(fn: RemoteCall, message: string): string {
  const text = `'${message.replace(/'/g, "''")}'`;
  return `SELECT ARRAY['0', ${text}]::text[] AS ${fn}`;
}

function checkBranch(branch: string): void {
  if (branch !== DEFAULT_BRANCH)
    throw new RemoteOperationError(
      `branch "${branch}" does not exist`,
      "42704",
      `this database has one branch, ${DEFAULT_BRANCH} (branches are not supported yet)`,
    );
}

/** Leading flags (and flags that take a value) apart from positional arguments. */
function splitFlags(
  args: string[],
  known: string[],
  withValue: string[] = [],
): { flags: Set<string>; values: Map<string, string>; positional: string[] } {
  const flags = new Set<string>();
  const values = new Map<string, string>();
  const positional: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (withValue.includes(a)) {
      const value = args[++i];
      if (value === undefined) throw new RemoteOperationError(`${a} needs a value`, "22023");
      values.set(a, value);
    } else if (known.includes(a)) flags.add(a);
    else if (a.startsWith("-")) throw new RemoteOperationError(`unknown option ${a}`, "22023");
    else positional.push(a);
  }
  return { flags, values, positional };
}

/** A dolt_replicate_heads pattern: `*` matches any run of characters. */
export function globMatches(pattern: string, name: string): boolean {
  const re = new RegExp(
    `^${pattern
      .split("*")
      .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
      .join(".*")}$`,
  );
  return re.test(name);
}
