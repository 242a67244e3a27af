// Branches as the front door serves them: dolt_branch, dolt_checkout, dolt_merge (fast-forward),
// and the other branches' heads for dolt_branches. A branch `b` of database `db` is the store
// database `db/b` (names.ts); making one copies the database it starts from (copy-database.ts),
// moving a session to one opens a store session there (Session.switchDatabase).
//
// Changes to one database's branches run one at a time (a queue per database), so two sessions
// making the same branch do not both copy it.
import { createHash } from "node:crypto";
import { chownSync, renameSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import pg from "pg";
import { connect } from "../db.ts";
import { KeyedQueue } from "../keyed-queue.ts";
import type { Logger } from "../log.ts";
import { DirectoryRemote } from "../remotes/directory-remote.ts";
import { pullBranch } from "../remotes/pull.ts";
import { pushCommitsAfter } from "../remotes/push.ts";
import { clusterPaths } from "../store/cluster.ts";
import type { StoreHandle } from "../store/store.ts";
import { copyDatabase } from "./copy-database.ts";
import {
  BranchError,
  branchDatabase,
  branchesOf,
  checkBranchName,
  MAIN_BRANCH,
  splitDatabaseName,
} from "./names.ts";

export type BranchCall = "dolt_branch" | "dolt_checkout" | "dolt_merge";

/** What a branch call does for the session: the SQL whose result the client gets, and where it goes next. */
export interface BranchCallResult {
  sql: string;
  switchTo?: string;
}

export interface BranchHooks {
  /** Strata's own idle connections to `database` must go before it is dropped or renamed. */
  release(database: string): Promise<void>;
  /** A branch was made or moved: replicate it (a primary that pushes to a remote). */
  branchChanged(database: string): Promise<void>;
  /** A branch was deleted: delete it from the remote too. */
  branchDeleted(base: string, branch: string): Promise<void>;
}

export class BranchService {
  private readonly queues = new KeyedQueue();
  private catalog: pg.Pool | undefined;

  constructor(
    private readonly store: StoreHandle,
    private readonly log: Logger,
    private readonly hooks: BranchHooks,
  ) {}

  async call(fn: BranchCall, args: string[], database: string): Promise<BranchCallResult> {
    const { base, branch: current } = splitDatabaseName(database);
    switch (fn) {
      case "dolt_branch":
        return this.serialized(base, () => this.branch(base, current, args));
      case "dolt_checkout":
        // Only a checkout that makes a branch waits its turn behind other branch changes.
        return args.includes("-b") || args.includes("-B")
          ? this.serialized(base, () => this.checkout(base, current, args))
          : this.checkout(base, current, args);
      case "dolt_merge":
        return this.merge(base, current, args);
    }
  }

  /** The store databases of `base`'s branches, by branch name. */
  async branches(base: string): Promise<Map<string, string>> {
    // A pooled connection: every checkout asks (a new connection would double its cost).
    if (!this.catalog) {
      this.catalog = new pg.Pool({ ...this.config("postgres"), max: 2, idleTimeoutMillis: 10_000 });
      this.catalog.on("error", () => {}); // an idle connection the store closed: the next query opens another
    }
    const { rows } = await this.catalog.query<{ datname: string }>(
      "SELECT datname FROM pg_database WHERE datname = $1 OR left(datname, length($1) + 1) = $1 || '/'",
      [base],
    );
    return branchesOf(
      base,
      rows.map((r) => r.datname),
    );
  }

  async close(): Promise<void> {
    await this.catalog?.end().catch(() => {});
    this.catalog = undefined;
  }

  /**
   * Fill `database`'s strata.branch_heads with the heads of its sibling branches (read from each
   * branch's database), so that dolt_branches there lists them all.
   */
  async refreshHeads(database: string): Promise<void> {
    const { base, branch: current } = splitDatabaseName(database);
    const heads: Record<string, unknown>[] = [];
    for (const [branch, db] of await this.branches(base)) {
      if (branch === current) continue;
      const client = await connect(this.config(db)).catch(() => null);
      if (!client) continue; // dropped meanwhile
      try {
        const { rows } = await client.query(
          // The date as ISO 8601 text, to the microsecond (a JavaScript Date keeps milliseconds).
          `SELECT c.hash, c.committer, c.email, to_jsonb(c.date) #>> '{}' AS date, c.message,
                  EXISTS (SELECT 1 FROM strata.working_changes) OR EXISTS (SELECT 1 FROM strata.working_schema_changes) AS dirty
             FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT * FROM strata.commits ORDER BY seq DESC LIMIT 1) c ON true`,
        );
        heads.push({ name: branch, ...rows[0] });
      } catch (err) {
        this.log.debug({ database: db, err: (err as Error).message }, "cannot read a branch's head");
      } finally {
        await client.end().catch(() => {});
      }
    }
    const client = await connect(this.config(database));
    try {
      // A hot standby, or a cluster node that is not a writable primary: the store is read-only.
      const { rows } = await client.query<{ r: boolean }>(
        "SELECT pg_is_in_recovery() OR current_setting('default_transaction_read_only') = 'on' AS r",
      );
      if (rows[0].r) {
        this.writeHeadsFile(database, heads);
        return;
      }
      await client.query("BEGIN");
      await client.query("DELETE FROM strata.branch_heads");
      await client.query(
        `INSERT INTO strata.branch_heads (name, hash, latest_committer, latest_committer_email, latest_commit_date, latest_commit_message, dirty)
         SELECT name, hash, committer, email, date, message, coalesce(dirty, false)
           FROM jsonb_to_recordset($1::jsonb) AS h(name text, hash text, committer text, email text, date timestamptz, message text, dirty boolean)`,
        [JSON.stringify(heads)],
      );
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK").catch(() => {});
      throw err;
    } finally {
      await client.end().catch(() => {});
    }
  }

  /**
   * A read-only store (a hot standby's, or a cluster node's that is not a writable primary) cannot
   * be written: the heads go to a file in its PGDATA, which strata.branch_heads_now() reads there
   * (branch-sql.ts).
   */
  private writeHeadsFile(database: string, heads: Record<string, unknown>[]): void {
    const spec = this.store.managed;
    if (!spec) return; // a store Strata does not run: the standby shows the primary's last heads
    const file = join(
      clusterPaths(spec).pgdata,
      `strata_branch_heads.${createHash("md5").update(database).digest("hex")}.json`,
    );
    writeFileSync(`${file}.tmp`, JSON.stringify(heads));
    if (spec.osUser) chownSync(`${file}.tmp`, spec.osUser.uid, spec.osUser.gid);
    renameSync(`${file}.tmp`, file);
  }

  private async branch(base: string, current: string, args: string[]): Promise<BranchCallResult> {
    const { flags, positional } = splitFlags(args, [
      "-c",
      "--copy",
      "-m",
      "--move",
      "-d",
      "--delete",
      "-D",
      "-f",
      "--force",
    ]);
    const force = flags.has("-f") || flags.has("--force") || flags.has("-D");
    if (flags.has("-d") || flags.has("--delete") || flags.has("-D")) {
      if (positional.length === 0) throw usage("dolt_branch('-d', 'name')");
      for (const name of positional) await this.deleteBranch(base, current, name, force);
      return { sql: result("dolt_branch", "") };
    }
    if (flags.has("-m") || flags.has("--move")) {
      const [from, to] = positional.length === 1 ? [current, positional[0]] : positional;
      if (!from || !to || positional.length > 2) throw usage("dolt_branch('-m', 'old', 'new')");
      await this.renameBranch(base, current, from, to, force);
      return { sql: result("dolt_branch", "") };
    }
    if (flags.has("-c") || flags.has("--copy")) {
      const [from, to] = positional.length === 1 ? [current, positional[0]] : positional;
      if (!from || !to || positional.length > 2) throw usage("dolt_branch('-c', 'from', 'to')");
      await this.createBranch(base, to, from, { keepWorkingSet: true, force });
      return { sql: result("dolt_branch", "") };
    }
    const [name, start] = positional;
    if (!name || positional.length > 2)
      throw usage("dolt_branch('name') or dolt_branch('name', 'start_branch')");
    await this.createBranch(base, name, start ?? current, { keepWorkingSet: false, force });
    return { sql: result("dolt_branch", "") };
  }

  private async checkout(base: string, current: string, args: string[]): Promise<BranchCallResult> {
    const { flags, positional } = splitFlags(args, ["-b", "-B"]);
    const [name, start] = positional;
    if (!name || positional.length > 2)
      throw usage("dolt_checkout('branch') or dolt_checkout('-b', 'new_branch')");
    if (flags.has("-b") || flags.has("-B")) {
      // The new branch takes the session's uncommitted changes with it, as Doltgres's does.
      await this.createBranch(base, name, start ?? current, { keepWorkingSet: true, force: flags.has("-B") });
      return {
        sql: result("dolt_checkout", `Switched to a new branch '${name}'`),
        switchTo: branchDatabase(base, name),
      };
    }
    if (positional.length > 1) throw usage("dolt_checkout('branch')");
    const branches = await this.branches(base);
    const database = branches.get(name);
    if (!database)
      throw new BranchError(
        `branch "${name}" does not exist in database "${base}"`,
        "42704",
        `the branches are ${listed(branches)}; make one with dolt_checkout('-b', '${name}')`,
      );
    if (name === current) return { sql: result("dolt_checkout", `Already on branch '${name}'`) };
    return { sql: result("dolt_checkout", `Switched to branch '${name}'`), switchTo: database };
  }

  /** dolt_merge('branch'): fast-forward the session's branch to `branch`'s head. */
  private async merge(base: string, current: string, args: string[]): Promise<BranchCallResult> {
    const { flags, positional } = splitFlags(args, [
      "--no-ff",
      "--ff-only",
      "--squash",
      "--abort",
      "--no-commit",
    ]);
    if (flags.has("--abort"))
      throw new BranchError(
        "there is no merge to abort",
        "55000",
        "Strata merges fast-forward only: nothing is ever left half-merged",
      );
    if (flags.has("--no-ff") || flags.has("--squash") || flags.has("--no-commit"))
      throw new BranchError(
        `dolt_merge ${[...flags].join(" ")} is not supported: Strata merges fast-forward only`,
        "0A000",
        "merge without options; a branch that diverged must be brought up to date by hand",
      );
    const [name] = positional;
    if (!name || positional.length !== 1) throw usage("dolt_merge('branch')");
    const branches = await this.branches(base);
    const sourceDb = branches.get(name);
    if (!sourceDb)
      throw new BranchError(
        `branch "${name}" does not exist in database "${base}"`,
        "42704",
        `the branches are ${listed(branches)}`,
      );
    const targetDb = branchDatabase(base, current);
    const source = await connect(this.config(sourceDb));
    const target = await connect(this.config(targetDb));
    try {
      const sourceHead = await headOf(source);
      const targetHead = await headOf(target);
      if (!sourceHead || sourceHead === targetHead || (await hasCommit(target, sourceHead)))
        return { sql: mergeResult(targetHead ?? "", false, "Everything up-to-date") };
      if (targetHead && !(await hasCommit(source, targetHead)))
        throw new BranchError(
          `cannot merge "${name}" into "${current}": they have diverged (each has commits the other lacks), and Strata merges fast-forward only`,
          "0A000",
          `bring "${current}" up to date some other way, or merge the other way round if "${name}" holds everything`,
        );
      const dir = await mkdtemp(join(tmpdir(), "strata-merge-"));
      try {
        const storage = new DirectoryRemote(dir, { url: pathToFileURL(dir).href });
        if (!targetHead)
          throw new BranchError(
            `cannot merge into "${current}": it has no commits yet`,
            "0A000",
            `make "${name}" from it instead`,
          );
        const pushed = await pushCommitsAfter({ client: source, storage, branch: name, base: targetHead });
        await pullBranch({ client: target, storage, remote: `branch ${name}`, branch: name, record: false });
        this.log.info(
          { database: base, from: name, into: current, commits: pushed.commits },
          "fast-forward merge",
        );
        void this.hooks.branchChanged(targetDb).catch(() => {});
        return {
          sql: mergeResult(
            pushed.head,
            true,
            `merge successful: fast-forward, ${pushed.commits} commit${pushed.commits === 1 ? "" : "s"}`,
          ),
        };
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    } finally {
      await source.end().catch(() => {});
      await target.end().catch(() => {});
    }
  }

  private async createBranch(
    base: string,
    name: string,
    from: string,
    opts: { keepWorkingSet: boolean; force: boolean },
  ): Promise<void> {
    checkBranchName(base, name);
    const branches = await this.branches(base);
    const source = branches.get(from);
    if (!source)
      throw new BranchError(
        `cannot make branch "${name}" from "${from}": no branch of database "${base}" has that name`,
        "42704",
        `Strata makes a branch from another branch's head; the branches are ${listed(branches)}`,
      );
    const target = branchDatabase(base, name);
    if (branches.has(name)) {
      if (!opts.force || name === MAIN_BRANCH)
        throw new BranchError(
          `branch "${name}" already exists`,
          "42P04",
          `delete it first (dolt_branch('-d', '${name}')) or choose another name`,
        );
      await this.dropBranchDatabase(target, true);
    }
    const started = Date.now();
    await copyDatabase(this.store, source, target);
    if (!opts.keepWorkingSet) await this.dropWorkingSet(target, name);
    this.log.info({ database: base, branch: name, from, ms: Date.now() - started }, "branch created");
    void this.hooks.branchChanged(target).catch(() => {});
  }

  /** A branch made with dolt_branch starts at its source's head: without uncommitted changes. */
  private async dropWorkingSet(database: string, name: string): Promise<void> {
    const client = await connect(this.config(database));
    try {
      const { rows } = await client.query<{ dirty: boolean }>(
        "SELECT EXISTS (SELECT 1 FROM strata.working_changes) OR EXISTS (SELECT 1 FROM strata.working_schema_changes) AS dirty",
      );
      if (!rows[0]?.dirty) return;
      // As a client would: the capture triggers must not take the undo for new changes.
      await client.query("SET strata.applying = off");
      await client.query("SELECT dolt.dolt_reset('--hard')");
    } catch (err) {
      await client.end().catch(() => {});
      // Ended first: an open connection would keep the drop waiting.
      await this.dropBranchDatabase(database, true).catch(() => {});
      const e = err as { message?: string };
      throw new BranchError(
        `cannot make branch "${name}" at the head commit: its source has uncommitted changes that cannot be undone in the copy (${e.message})`,
        "55000",
        `commit them first, or take them along with dolt_checkout('-b', '${name}')`,
      );
    } finally {
      await client.end().catch(() => {}); // (a second end() is harmless)
    }
  }

  private async deleteBranch(base: string, current: string, name: string, force: boolean): Promise<void> {
    if (name === MAIN_BRANCH)
      throw new BranchError(
        `cannot delete branch "${MAIN_BRANCH}": it is database "${base}" itself`,
        "55000",
        `drop the database to remove it: DROP DATABASE ${base}`,
      );
    if (name === current)
      throw new BranchError(
        `cannot delete branch "${name}": it is checked out in this session`,
        "55006",
        `check out another branch first: dolt_checkout('${MAIN_BRANCH}')`,
      );
    const database = (await this.branches(base)).get(name);
    if (!database) throw new BranchError(`branch "${name}" does not exist in database "${base}"`, "42704");
    await this.dropBranchDatabase(database, force);
    this.log.info({ database: base, branch: name }, "branch deleted");
    await this.hooks.branchDeleted(base, name).catch(() => {});
  }

  private async dropBranchDatabase(database: string, force: boolean): Promise<void> {
    await this.hooks.release(database);
    await this.withAdmin(async (admin) => {
      try {
        await admin.query(
          `DROP DATABASE IF EXISTS ${pg.escapeIdentifier(database)}${force ? " WITH (FORCE)" : ""}`,
        );
      } catch (err) {
        if ((err as { code?: string }).code !== "55006") throw err;
        throw inUse(database, "delete", "-D");
      }
    });
  }

  private async renameBranch(
    base: string,
    current: string,
    from: string,
    to: string,
    force: boolean,
  ): Promise<void> {
    if (from === MAIN_BRANCH || to === MAIN_BRANCH)
      throw new BranchError(
        `cannot rename branch "${MAIN_BRANCH}": it is database "${base}" itself`,
        "0A000",
        "rename the database instead (ALTER DATABASE ... RENAME TO ...)",
      );
    if (from === current)
      throw new BranchError(
        `cannot rename branch "${from}": it is checked out in this session`,
        "55006",
        `check out another branch first: dolt_checkout('${MAIN_BRANCH}')`,
      );
    checkBranchName(base, to);
    const branches = await this.branches(base);
    const database = branches.get(from);
    if (!database) throw new BranchError(`branch "${from}" does not exist in database "${base}"`, "42704");
    if (branches.has(to)) throw new BranchError(`branch "${to}" already exists`, "42P04");
    await this.hooks.release(database);
    await this.withAdmin(async (admin) => {
      if (force)
        await admin.query(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
          [database],
        );
      try {
        await admin.query(
          `ALTER DATABASE ${pg.escapeIdentifier(database)} RENAME TO ${pg.escapeIdentifier(branchDatabase(base, to))}`,
        );
      } catch (err) {
        if ((err as { code?: string }).code !== "55006") throw err;
        throw inUse(database, "rename", "-f");
      }
    });
    this.log.info({ database: base, from, to }, "branch renamed");
    await this.hooks.branchDeleted(base, from).catch(() => {});
    void this.hooks.branchChanged(branchDatabase(base, to)).catch(() => {});
  }

  private serialized<T>(base: string, work: () => Promise<T>): Promise<T> {
    return this.queues.run(base, work);
  }

  private async withAdmin<T>(work: (admin: pg.Client) => Promise<T>): Promise<T> {
    const admin = await connect(this.config("postgres"));
    try {
      return await work(admin);
    } finally {
      await admin.end().catch(() => {});
    }
  }

  private config(database: string): pg.ClientConfig {
    return { ...this.store.connectionConfig(database), application_name: "strata branches" };
  }
}

function inUse(database: string, action: string, flag: string): BranchError {
  return new BranchError(
    `cannot ${action} branch database "${database}": other sessions have it checked out`,
    "55006",
    `they must check out another branch (or disconnect) first; dolt_branch('${flag}', ...) ends their sessions`,
  );
}

async function headOf(client: pg.Client): Promise<string | null> {
  const { rows } = await client.query<{ hash: string }>(
    "SELECT hash FROM strata.commits ORDER BY seq DESC LIMIT 1",
  );
  return rows[0]?.hash ?? null;
}

async function hasCommit(client: pg.Client, hash: string): Promise<boolean> {
  return ((await client.query("SELECT 1 FROM strata.commits WHERE hash = $1", [hash])).rowCount ?? 0) > 0;
}

function listed(branches: Map<string, string>): string {
  return [...branches.keys()].sort().join(", ");
}

function usage(form: string): BranchError {
  return new BranchError("wrong arguments", "22023", `call it as SELECT ${form}`);
}

function result(fn: BranchCall, message: string): string {
  return `SELECT ARRAY['0', ${quote(message)}]::text[] AS ${fn}`;
}

/** Doltgres's dolt_merge result: hash, fast_forward, conflicts, message. */
function mergeResult(hash: string, fastForward: boolean, message: string): string {
  return `SELECT ARRAY[${quote(hash)}, '${fastForward ? 1 : 0}', '0', ${quote(message)}]::text[] AS dolt_merge`;
}

const quote = (text: string) => `'${text.replace(/'/g, "''")}'`;

/** Leading flags apart from positional arguments. */
function splitFlags(args: string[], known: string[]): { flags: Set<string>; positional: string[] } {
  const flags = new Set<string>();
  const positional: string[] = [];
  for (const a of args) {
    if (known.includes(a)) flags.add(a);
    else if (a.startsWith("-"))
      throw new BranchError(`unknown option ${a}`, "22023", `the options are ${known.join(", ")}`);
    else positional.push(a);
  }
  return { flags, positional };
}
