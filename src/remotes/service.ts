// Remotes as the front door serves them: the SQL calls that need the network (dolt_push,
// dolt_pull, dolt_fetch, dolt_clone), and replication through a remote, as the system variables
// configure it per database:
//
//   dolt_replicate_to_remote = 'origin'   push the head after every transaction that ends
//                                         (before the client hears it ended, unless
//                                         dolt_async_replication = 1), and every second for
//                                         commits made elsewhere (replicated from upstream)
//   dolt_read_replica_remote = 'origin'   pull when a transaction starts, for the branches
//   + dolt_replicate_heads / _all_heads   named: each into its own database (db/branch, made
//                                         by cloning on first sight, dropped when the remote
//                                         no longer has it)
//
// A branch is a database of its own (branches/names.ts): pushes and pulls of branch b of db
// work on the database db/b, so everything below works per database.
//
// Operations on one database run one at a time (a queue per database), so a push never races
// another push from this server, and a pull never applies the same commits twice.
import pg from "pg";
import { branchDatabase, MAIN_BRANCH, splitDatabaseName } from "../branches/names.ts";
import { connect } from "../db.ts";
import { KeyedQueue } from "../keyed-queue.ts";
import type { Logger } from "../log.ts";
import type { StoreHandle } from "../store/store.ts";
import { RemoteOperationError } from "./pack-objects.ts";
import { fetchBranch, type PullResult, pullBranch } from "./pull.ts";
import { type PushResult, pushBranch } from "./push.ts";
import {
  type ReplicationSettings,
  ReplicationSettingsCache,
  SETTINGS_TTL_MS,
} from "./replication-settings.ts";
import { checkRefName, isValidRefName, openRemoteStorage, type RemoteStorage } from "./storage.ts";
import { pullTags, pushTags } from "./tags.ts";
import { remoteUrlTemplate } from "./url.ts";

export type RemoteCall = "dolt_push" | "dolt_pull" | "dolt_fetch" | "dolt_clone";

export class RemoteService {
  private readonly queues = new KeyedQueue();
  private readonly settings: ReplicationSettingsCache;
  private readonly warned = new Set<string>();
  /** The head each database last had in each remote it replicates to (pushed or up to date). */
  private readonly pushedHead = new Map<string, string>();
  private readonly pools = new Map<string, pg.Pool>();
  /** Per database, the read replica's pull that has not started yet. */
  private readonly waitingPulls = new Map<string, Promise<void>>();
  private readonly remoteKnown = new Map<string, { at: number; value: boolean }>();
  /** Databases seen to exist, and when (for cloneOnFirstUse: the common case costs nothing). */
  private readonly existingDatabases = new Map<string, number>();
  private readonly firstUseClones = new Map<string, Promise<void>>();

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
        const [remote = "origin", branch = splitDatabaseName(database).branch] = positional;
        checkBranch(branch);
        const { base } = splitDatabaseName(database);
        const source = branchDatabase(base, branch);
        if (!(await this.branchDatabases(base)).has(source))
          throw new RemoteOperationError(
            `dolt_push: branch "${branch}" does not exist in database "${base}"`,
            "42704",
            "SELECT name FROM dolt_branches lists the branches",
          );
        const { result, tags } = await this.withRemote(source, remote, async (client, storage) => {
          const pushed = await pushBranch({
            client,
            storage,
            remote,
            branch,
            force: flags.has("--force") || flags.has("-f"),
          });
          return { result: pushed, tags: await pushTags(client, storage, remote, this.log) };
        });
        this.noteDeferredSnapshot(database, remote, result);
        const tagNote = tags ? ` and ${tags} tag${tags === 1 ? "" : "s"}` : "";
        const message =
          result.status === "up-to-date" && !tags
            ? "Everything up-to-date"
            : `pushed ${result.commits} commit${result.commits === 1 ? "" : "s"}${tagNote} to ${remote}/${branch} (${result.head})`;
        return resultRow(fn, message);
      }
      case "dolt_pull": {
        const { positional } = splitFlags(args, []);
        const [remote = "origin", branch = splitDatabaseName(database).branch] = positional;
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
        const [remote = "origin", branch = splitDatabaseName(database).branch] = positional;
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
    // Every branch of a database pulls the same heads: they are its branches' databases.
    const base = splitDatabaseName(database).base;
    const known = this.settings.now(base);
    if (known instanceof Promise)
      return known.then((s) => (s?.pullFrom ? this.pullForRead(base, s) : undefined));
    return known?.pullFrom ? this.pullForRead(base, known) : undefined;
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
      const databases = await this.settings.databases();
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

  /**
   * A read replica with dolt_replication_remote_url_template clones a database the primary made
   * when a session first names it (connecting to it, or USE): the template gives its remote.
   * Undefined when there is nothing to do (decided from cached settings and databases).
   */
  cloneOnFirstUse(database: string): Promise<void> | undefined {
    const { base } = splitDatabaseName(database);
    const seen = this.existingDatabases.get(base);
    if ((seen !== undefined && Date.now() - seen < SETTINGS_TTL_MS) || !CLONABLE_NAME.test(base))
      return undefined;
    const known = this.settings.now("postgres");
    const go = (s: ReplicationSettings | null) =>
      s?.pullFrom && s.urlTemplate ? this.cloneIfMissing(base, s) : undefined;
    return known instanceof Promise ? known.then(go) : go(known);
  }

  private cloneIfMissing(base: string, s: ReplicationSettings): Promise<void> {
    let cloning = this.firstUseClones.get(base);
    if (cloning) return cloning;
    cloning = (async () => {
      if ((await this.branchDatabases(base)).has(base)) {
        this.existingDatabases.set(base, Date.now());
        return;
      }
      const url = remoteUrlTemplate(s.urlTemplate, base);
      const storage = openRemoteStorage(url);
      // Not a database of the primary's (an HTTP remote says so with 42704): the store will say
      // the database does not exist.
      const ref = await storage.readRef(`heads/${MAIN_BRANCH}`).catch((err: { code?: string }) => {
        if (err.code === "42704") return null;
        throw err;
      });
      if (!ref) return;
      await this.cloneInto(base, storage, url, s.pullFrom, MAIN_BRANCH);
      this.existingDatabases.set(base, Date.now());
    })().finally(() => this.firstUseClones.delete(base));
    this.firstUseClones.set(base, cloning);
    return cloning;
  }

  /** A branch was made or moved (database db/branch): a primary pushes it at once. */
  async branchChanged(database: string): Promise<void> {
    // The background push may have looked at the branch's database while it was being copied
    // (no Strata schema yet, or no remotes): what it cached is not the branch's.
    this.forgetDatabase(database);
    const s = await this.settings.now(database);
    this.log.debug({ database, push_to: s?.pushTo ?? null }, "branch changed");
    if (s?.pushTo) await this.pushForReplication(database, s);
  }

  /** A branch was deleted (or renamed away from): a primary deletes it from its remote too. */
  async branchDeleted(base: string, branch: string): Promise<void> {
    this.pushedHead.delete(branchDatabase(base, branch));
    const s = await this.settings.now(base);
    // Asked afresh, as for a push: a remote added a moment ago counts (a rare call, one query).
    if (s?.pushTo) this.remoteKnown.delete(`${base}\u0000${s.pushTo}`);
    if (!s?.pushTo || !(await this.hasRemote(base, s.pushTo, s.urlTemplate))) return;
    try {
      await this.withRemote(base, s.pushTo, async (client, storage) => {
        const ref = await storage.readRef(`heads/${branch}`);
        if (ref) await storage.compareAndSwapRef(`heads/${branch}`, ref, null);
        await client.query("DELETE FROM strata.remote_branches WHERE remote = $1 AND branch = $2", [
          s.pushTo,
          branch,
        ]);
      });
      this.log.info({ database: base, branch, remote: s.pushTo }, "deleted the branch from the remote");
    } catch (err) {
      this.log.warn(
        { database: base, branch, remote: s.pushTo, err: (err as Error).message },
        "cannot delete the branch from the remote",
      );
      if (!s.skipErrors) throw err;
    }
  }

  /** Strata's idle connections to `database` end (it is about to be dropped or renamed). */
  async release(database: string): Promise<void> {
    const pool = this.pools.get(database);
    this.pools.delete(database);
    this.forgetDatabase(database);
    await Promise.all([pool?.end().catch(() => {}), this.settings.release(database)]);
  }

  /** `release` for databases about to be dropped, and their branches' (`<database>/<branch>`). */
  async releaseDropped(databases: string[]): Promise<void> {
    const names = new Set(databases);
    for (const name of this.pools.keys())
      if (databases.some((d) => name.startsWith(`${d}/`))) names.add(name);
    await Promise.all([...names].map((name) => this.release(name)));
  }

  /** What is cached of `database`: its settings and whether it has its remotes. */
  private forgetDatabase(database: string): void {
    this.settings.forget(database);
    for (const key of [...this.remoteKnown.keys()])
      if (key.startsWith(`${database}\u0000`)) this.remoteKnown.delete(key);
  }

  private async pushForReplication(database: string, s: ReplicationSettings): Promise<void> {
    // A cached "no remote" is asked again (a short connection, closed at once, not a pooled one
    // that would keep the database busy): a remote added just before (dolt_remote('add') then
    // dolt_commit in one breath) must be pushed to by that very commit.
    const key = `${database}\u0000${s.pushTo}`;
    if (this.remoteKnown.get(key)?.value === false) this.remoteKnown.delete(key);
    if (!(await this.hasRemote(database, s.pushTo, s.urlTemplate))) return;
    if (!(await this.hasUnpushed(database, s.pushTo))) {
      this.log.debug({ database, remote: s.pushTo }, "nothing to push");
      return;
    }
    const branch = splitDatabaseName(database).branch;
    try {
      const result = await this.withRemote(database, s.pushTo, async (client, storage) => {
        const pushed = await pushBranch({ client, storage, remote: s.pushTo, branch });
        await pushTags(client, storage, s.pushTo, this.log);
        return pushed;
      });
      this.pushedHead.set(`${database}\u0000${s.pushTo}`, result.head);
      this.noteDeferredSnapshot(database, s.pushTo, result);
      if (result.status === "pushed")
        this.log.debug(
          { database, branch, remote: s.pushTo, commits: result.commits, head: result.head },
          "pushed",
        );
    } catch (err) {
      this.log.warn({ database, remote: s.pushTo, err: (err as Error).message }, "replication push failed");
      if (!s.skipErrors) throw err;
    }
  }

  private noteDeferredSnapshot(database: string, remote: string, result: PushResult): void {
    if (result.snapshotDeferred)
      this.log.warn({ database, remote, reason: result.snapshotDeferred }, "push wrote no snapshot");
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
                SELECT 1 FROM strata.remote_tags r WHERE r.remote = $1 AND r.name = t.name AND r.commit_hash = t.commit_hash))
              OR EXISTS (SELECT 1 FROM strata.remote_tags r WHERE r.remote = $1 AND NOT EXISTS (
                SELECT 1 FROM strata.tags t WHERE t.name = r.name)) AS tags`,
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
    await this.settings.release();
  }

  /** A read replica's pull at transaction start: every replicated head of `base`, each into its branch's database. */
  private async pullForRead(base: string, s: ReplicationSettings): Promise<void> {
    if (s.heads && s.allHeads) {
      this.warnOnce(
        `${base}:heads`,
        { database: base },
        "dolt_replicate_heads and dolt_replicate_all_heads are both set: only one may be; not pulling",
      );
      return;
    }
    const patterns = s.heads
      .split(",")
      .map((h) => h.trim())
      .filter(Boolean);
    if (!s.allHeads && patterns.length === 0) {
      this.warnOnce(
        `${base}:noheads`,
        { database: base },
        "dolt_read_replica_remote is set but neither dolt_replicate_heads nor dolt_replicate_all_heads: not pulling",
      );
      return;
    }
    if (!(await this.hasRemote(base, s.pullFrom))) return;
    // Transactions that start while a pull waits its turn share it: it reads the remote after
    // they asked. Once it has started, later ones wait for the next.
    let waiting = this.waitingPulls.get(base);
    if (!waiting) {
      const pull = this.withRemote(base, s.pullFrom, async (client, storage) => {
        if (this.waitingPulls.get(base) === pull) this.waitingPulls.delete(base);
        await this.pullHeads(base, client, storage, s.pullFrom, s.allHeads ? ["*"] : patterns);
        // Tags come with "all heads" (the reference: all branches and tags).
        if (s.allHeads) await pullTags(client, storage, s.pullFrom, { prune: true });
      });
      waiting = pull;
      this.waitingPulls.set(base, pull);
      pull
        .catch(() => {}) // each waiter handles it below
        .finally(() => {
          if (this.waitingPulls.get(base) === pull) this.waitingPulls.delete(base);
        });
    }
    try {
      await waiting;
    } catch (err) {
      if (s.skipErrors) {
        this.log.warn(
          { database: base, remote: s.pullFrom, err: (err as Error).message },
          "replication pull failed",
        );
        return;
      }
      throw err;
    }
  }

  /**
   * Pull the remote's branches that `patterns` name into their databases: main into `base`
   * (through `client`), any other branch b into base/b, cloned from the remote the first time.
   * A branch pulled before that the remote no longer has (deleted on the primary) is dropped.
   */
  private async pullHeads(
    base: string,
    client: pg.Client,
    storage: RemoteStorage,
    remote: string,
    patterns: string[],
  ): Promise<void> {
    const wanted = (branch: string) => patterns.some((p) => globMatches(p, branch));
    let remoteBranches: string[];
    if (patterns.some((p) => p.includes("*"))) {
      remoteBranches = [...(await storage.listRefs("heads/")).keys()].map((name) =>
        name.slice("heads/".length),
      );
    } else {
      // Named heads: one ref read each, no listing.
      const valid = patterns.filter((p) => {
        if (isValidRefName(`heads/${p}`)) return true;
        this.warnOnce(
          `${base}:invalid:${p}`,
          { database: base, branch: p },
          `dolt_replicate_heads names "${p}", which is not a branch name: ignored`,
        );
        return false;
      });
      const present = await Promise.all(
        valid.map(async (p) => ((await storage.readRef(`heads/${p}`)) ? p : null)),
      );
      remoteBranches = present.filter((p): p is string => p !== null);
      for (const missing of valid.filter((p) => !remoteBranches.includes(p)))
        this.warnOnce(
          `${base}:missing:${missing}`,
          { database: base, remote, branch: missing },
          `dolt_replicate_heads names branch "${missing}", which remote "${remote}" does not have: nothing to pull for it (yet)`,
        );
    }
    const local = await this.branchDatabases(base);
    for (const branch of remoteBranches.filter(wanted)) {
      if (branch === MAIN_BRANCH) {
        await pullBranch({ client, storage, remote, branch });
        continue;
      }
      const database = branchDatabase(base, branch);
      if (local.has(database)) {
        const branchClient = await connect(this.config(database));
        try {
          await pullBranch({ client: branchClient, storage, remote, branch });
        } finally {
          await branchClient.end().catch(() => {});
        }
      } else await this.cloneInto(database, storage, storage.url, remote, branch);
    }
    for (const database of local) {
      const branch = splitDatabaseName(database).branch;
      if (branch === MAIN_BRANCH || !wanted(branch) || remoteBranches.includes(branch)) continue;
      if (!(await this.pulledFrom(database, remote, branch))) continue; // the replica's own branch
      await this.release(database);
      const admin = await connect(this.config("postgres"));
      try {
        await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(database)} WITH (FORCE)`);
      } finally {
        await admin.end().catch(() => {});
      }
      this.log.info({ database: base, branch, remote }, "branch deleted on the remote: dropped it here too");
    }
  }

  /** Whether `database` has pulled `branch` from `remote` (so the remote is where it comes from). */
  private async pulledFrom(database: string, remote: string, branch: string): Promise<boolean> {
    const client = await connect(this.config(database)).catch(() => null);
    if (!client) return false;
    try {
      const { rowCount } = await client.query(
        "SELECT 1 FROM strata.remote_branches WHERE remote = $1 AND branch = $2",
        [remote, branch],
      );
      return (rowCount ?? 0) > 0;
    } finally {
      await client.end().catch(() => {});
    }
  }

  private async branchDatabases(base: string): Promise<Set<string>> {
    const admin = await connect(this.config("postgres"));
    try {
      const { rows } = await admin.query<{ datname: string }>(
        "SELECT datname FROM pg_database WHERE datname = $1 OR left(datname, length($1) + 1) = $1 || '/'",
        [base],
      );
      return new Set(rows.map((r) => r.datname));
    } finally {
      await admin.end().catch(() => {});
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
          // Every branch of a database shares its remote: the template names the database.
          const url = remoteUrlTemplate(urlTemplate, splitDatabaseName(database).base);
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
        const url = await this.remoteUrl(client, database, remote);
        if (!url)
          throw new RemoteOperationError(
            `database "${database}" has no remote named "${remote}"`,
            "42704",
            `add it: SELECT dolt_remote('add', '${remote}', 'file:///path/to/remote')`,
          );
        return await work(client, openRemoteStorage(url));
      } catch (err) {
        // A connection left mid-COPY or mid-transaction is not given back for reuse.
        broken = (err as { code?: unknown }).code === undefined ? (err as Error) : undefined;
        throw err;
      } finally {
        client.release(broken);
      }
    };
    return this.queues.run(database, run);
  }

  private config(database: string): pg.ClientConfig {
    return { ...this.store.connectionConfig(database), application_name: "strata remotes" };
  }

  /** The remote's URL: the branch's own remotes first, then its database's (added after it was made). */
  private async remoteUrl(client: pg.Client, database: string, remote: string): Promise<string | undefined> {
    const query = "SELECT url FROM strata.remotes WHERE name = $1";
    const own = (await client.query<{ url: string }>(query, [remote])).rows[0]?.url;
    const base = splitDatabaseName(database).base;
    if (own || base === database) return own;
    return (await this.pool(base).query<{ url: string }>(query, [remote])).rows[0]?.url;
  }

  /** dolt_clone(url[, name]) / ('--branch', 'main', url[, name]): a new database from a remote. */
  private async clone(args: string[]): Promise<string> {
    const { positional, values } = splitFlags(args, [], ["--branch", "-b", "--remote", "--depth"]);
    const [url, named] = positional;
    if (!url)
      throw new RemoteOperationError(
        "dolt_clone needs the remote's URL",
        "22023",
        "SELECT dolt_clone('file:///path/to/remote', 'database_name')",
      );
    const branch = values.get("--branch") ?? values.get("-b") ?? MAIN_BRANCH;
    checkBranch(branch);
    const remote = values.get("--remote") ?? "origin";
    const storage = openRemoteStorage(url);
    const name = named ?? url.replace(/\/+$/, "").split("/").pop() ?? "";
    if (!CLONABLE_NAME.test(name))
      throw new RemoteOperationError(
        `dolt_clone: "${name}" is not a usable database name`,
        "22023",
        "name the database: SELECT dolt_clone('url', 'name')",
      );
    const depth = values.get("--depth");
    if (depth !== undefined && !/^[1-9][0-9]*$/.test(depth))
      throw new RemoteOperationError(
        `--depth ${depth} is not a number of commits`,
        "22023",
        "e.g. dolt_clone('--depth', '1', url, name)",
      );
    const result = await this.cloneInto(name, storage, url, remote, branch, depth !== undefined);
    const note = result.shallowFrom
      ? ` (shallow: history from the remote's newest snapshot, commit ${result.shallowFrom})`
      : depth !== undefined
        ? " (whole history: the remote has no snapshot yet to start a shallow clone from)"
        : "";
    return resultRow("dolt_clone", `cloned ${url} into database ${name}${note}`);
  }

  /** A new database `name` holding the remote's `branch`; nothing is left of it when that fails. */
  private async cloneInto(
    name: string,
    storage: RemoteStorage,
    url: string,
    remote: string,
    branch: string,
    shallow = false,
  ): Promise<PullResult> {
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
        const result = await pullBranch({ client, storage, remote, branch, fresh: true, shallow });
        await pullTags(client, storage, remote);
        this.log.info(
          {
            database: name,
            url,
            branch,
            commits: result.commits,
            from_snapshot: result.loaded ?? 0,
            shallow_from: result.shallowFrom,
            head: result.head,
          },
          "cloned",
        );
        return result;
      } finally {
        await client.end().catch(() => {});
      }
    } catch (err) {
      const admin2 = await connect(this.config("postgres"));
      await admin2.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`).catch(() => {});
      await admin2.end().catch(() => {});
      throw err;
    }
  }
}

/** Database names a clone may make (no "/": that names a branch). */
const CLONABLE_NAME = /^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/;

function resultRow(fn: RemoteCall, message: string): string {
  const text = `'${message.replace(/'/g, "''")}'`;
  return `SELECT ARRAY['0', ${text}]::text[] AS ${fn}`;
}

function checkBranch(branch: string): void {
  checkRefName(`heads/${branch}`);
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
