// dolt_pull / dolt_fetch: bring a remote branch's commits into this database, fast-forward only.
//
//   ref heads/main ──▶ pack P3 ──base_pack──▶ P2 ──▶ P1 (base null: the branch's first commit)
//
// The chain is walked back (reading each pack's first section only) to the pack that holds this
// database's head; then the packs are applied oldest first, in one store transaction. Every pack
// is checked against its address (SHA-256) as it streams: a damaged or truncated pack fails the
// transaction before it commits, so nothing of it is ever applied.
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import {
  checkHeader,
  type PackHeader,
  quoteIdent,
  RemoteOperationError,
  readObjectFrames,
  readPackHeader,
  SNAPSHOT_FORMAT,
} from "./pack-objects.ts";
import { recordRemoteBranch } from "./push.ts";
import { PULL_STAGING_SQL } from "./remote-sql.ts";
import type { RefValue, RemoteStorage } from "./storage.ts";

/** A chain longer than this is a loop (a damaged remote), not history. */
const MAX_CHAIN = 10_000_000;

export interface PullResult {
  status: "pulled" | "up-to-date";
  branch: string;
  head: string;
  commits: number;
  /** Commits loaded as history under a snapshot (a clone), not applied one by one. */
  loaded?: number;
  /** A shallow clone: the commit its history starts at (the remote's newest snapshot's). */
  shallowFrom?: string;
}

/** The remote branch's head, recorded as seen (dolt_fetch). */
export async function fetchBranch(opts: {
  client: pg.Client;
  storage: RemoteStorage;
  remote: string;
  branch: string;
}): Promise<RefValue> {
  const ref = await readBranch(opts.storage, opts.remote, opts.branch);
  await recordRemoteBranch(opts.client, opts.remote, opts.branch, ref);
  return ref;
}

async function readBranch(storage: RemoteStorage, remote: string, branch: string): Promise<RefValue> {
  const ref = await storage.readRef(`heads/${branch}`);
  if (!ref)
    throw new RemoteOperationError(
      `remote "${remote}" has no branch "${branch}"`,
      "42704",
      `push it there first (SELECT dolt_push('${remote}', '${branch}'))`,
    );
  return ref;
}

/**
 * Bring the branch's commits into the database. `fresh`: the database was just made for this
 * (a clone), so the branch's latest snapshot may stand in for replaying the commits before it.
 */
export async function pullBranch(opts: {
  client: pg.Client;
  storage: RemoteStorage;
  remote: string;
  branch: string;
  fresh?: boolean;
  /** Record the remote branch as seen (strata.remote_branches); false for a scratch remote. */
  record?: boolean;
  /**
   * With `fresh`: start history at the branch's newest snapshot (its commit, then the commits
   * after it), without the commits before it. Without a snapshot in the remote, a whole clone.
   */
  shallow?: boolean;
}): Promise<PullResult> {
  const { client, storage, remote, branch } = opts;
  const ref = await readBranch(storage, remote, branch);
  const head = await localHead(client);
  if (ref.commit === head) {
    if (opts.record !== false) await recordRemoteBranch(client, remote, branch, ref);
    return { status: "up-to-date", branch, head: ref.commit, commits: 0 };
  }
  const known = await client.query("SELECT 1 FROM strata.commits WHERE hash = $1", [ref.commit]);
  if (known.rowCount) return { status: "up-to-date", branch, head: head ?? ref.commit, commits: 0 }; // ahead
  const chain = await packsSince(storage, ref, head, remote, branch);
  // The packs up to (and including) the one that made the newest snapshot load as history.
  const snapshot = opts.fresh && head === null ? chain[chain.length - 1].header.snapshot : null;
  const upTo = snapshot ? chain.findIndex((p) => p.header.commits.at(-1) === snapshot.commit) : -1;
  const shallow = Boolean(opts.shallow && snapshot && upTo >= 0);
  let commits = 0;
  let loaded = 0;
  await client.query("BEGIN");
  try {
    await client.query("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'");
    await client.query(PULL_STAGING_SQL);
    for (let i = 0; i < chain.length; i++) {
      const { address, skip, header } = chain[i];
      if (shallow && i < upTo) continue;
      if (shallow && i === upTo)
        loaded += await applyPack(client, storage, address, header.commits.length, "base");
      else if (i <= upTo) loaded += await applyPack(client, storage, address, skip, "history");
      else commits += await applyPack(client, storage, address, skip, "apply");
      if (snapshot && i === upTo)
        await loadSnapshot(client, storage, snapshot.address, snapshot.commit, shallow);
    }
    if (opts.record !== false) await recordRemoteBranch(client, remote, branch, ref);
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  }
  return {
    status: "pulled",
    branch,
    head: ref.commit,
    commits: commits + loaded,
    loaded,
    ...(shallow ? { shallowFrom: snapshot!.commit } : {}),
  };
}

export async function localHead(client: pg.Client): Promise<string | null> {
  const { rows } = await client.query<{ hash: string }>(
    "SELECT hash FROM strata.commits ORDER BY seq DESC LIMIT 1",
  );
  return rows[0]?.hash ?? null;
}

interface ChainPack {
  address: string;
  /** How many of its first commits this database has. */
  skip: number;
  header: PackHeader;
}

/** The packs to apply, oldest first. */
async function packsSince(
  storage: RemoteStorage,
  ref: RefValue,
  head: string | null,
  remote: string,
  branch: string,
): Promise<ChainPack[]> {
  const chain: ChainPack[] = [];
  let address: string | null = ref.pack;
  while (address) {
    if (chain.length > MAX_CHAIN)
      throw new RemoteOperationError(`remote "${remote}": pack chain loops`, "XX001");
    const header = await readPackHeader(storage, address);
    const at = head === null ? -1 : header.commits.indexOf(head);
    if (at >= 0) {
      chain.unshift({ address, skip: at + 1, header });
      return chain;
    }
    chain.unshift({ address, skip: 0, header });
    if (header.base === head) return chain;
    address = header.base_pack;
  }
  throw new RemoteOperationError(
    `this database's head ${head} is not in the history of ${remote}/${branch}`,
    "55000",
    "the database and the remote have diverged (the remote was force-pushed, or commits were made here): clone the remote again",
  );
}

const STAGING: Record<string, string> = {
  commits: "pull_commits",
  schema: "pull_schema",
  changes: "pull_changes",
  bases: "pull_bases",
};

/** A COPY FROM STDIN on the store fed section by section. */
class CopyIn {
  private target: ReturnType<typeof copyFrom> | undefined;
  private done: Promise<void> | undefined;

  constructor(private readonly client: pg.Client) {}

  start(sql: string): void {
    const target = this.client.query(copyFrom(sql));
    this.target = target;
    this.done = new Promise<void>((resolve, reject) => {
      target.on("finish", resolve);
      target.on("error", reject);
    });
    this.done.catch(() => {}); // awaited at the section's end, or given up with the pull
  }

  async write(bytes: Buffer): Promise<void> {
    const target = this.target;
    if (target && !target.write(bytes)) await new Promise((resolve) => target.once("drain", resolve));
  }

  async end(): Promise<void> {
    if (!this.target) return;
    this.target.end();
    await this.done;
    this.target = undefined;
  }

  /** A COPY left open would hold the connection: fail it (CopyFail), so ROLLBACK can run. */
  async abandon(): Promise<void> {
    if (!this.target) return;
    this.target.destroy(new Error("pull abandoned"));
    await this.done?.catch(() => {});
    this.target = undefined;
  }
}

/**
 * One pack's commits after its first `skip`: applied to the tables ("apply"), or loaded as
 * history only ("history", under a snapshot). Or ("base", a shallow clone) only the commit at
 * position `skip`, as the first commit, without history rows. Returns how many.
 */
async function applyPack(
  client: pg.Client,
  storage: RemoteStorage,
  address: string,
  skip: number,
  mode: "apply" | "history" | "base",
): Promise<number> {
  let count = 0;
  let ended = false;
  let section: string | undefined;
  const copy = new CopyIn(client);
  try {
    for await (const frame of readObjectFrames(storage, address)) {
      if (frame.type === "section") {
        const header = frame.header;
        section = header.section;
        const staging = STAGING[section];
        // A shallow base needs the commit's row only: the rest streams past (and is verified).
        if (staging && (mode !== "base" || section === "commits"))
          copy.start(`COPY pg_temp.${staging} FROM STDIN`);
        else if (section === "table" && mode === "apply" && Number(header.idx) > skip)
          copy.start(
            `COPY ${await tableFor(client, String(header.rel))} (${(header.columns as string[]).map(quoteIdent).join(", ")}) FROM STDIN`,
          );
        else if (section === "apply") {
          const from = Math.max(Number(header.from), skip + 1);
          const to = Number(header.to);
          if (mode === "base") {
            if (Number(header.from) <= skip && skip <= to) {
              await client.query("SELECT strata.load_shallow_base($1)", [skip]);
              count = 1;
            }
          } else if (from <= to && mode === "history") {
            await client.query("SELECT strata.load_pulled_history($1, $2)", [from, to]);
            count += to - from + 1;
          } else
            for (let idx = from; idx <= to; idx++) {
              await client.query("SELECT strata.apply_pulled($1)", [idx]);
              count++;
            }
        } else if (section === "end") ended = true;
      } else if (frame.type === "data") await copy.write(frame.bytes);
      else {
        await copy.end();
        if (section === "apply")
          await client.query(
            "TRUNCATE pg_temp.pull_commits, pg_temp.pull_schema, pg_temp.pull_changes, pg_temp.pull_bases",
          );
      }
    }
    if (!ended)
      throw new RemoteOperationError(
        `pack ${address} in ${storage.url} is truncated (no end section)`,
        "XX001",
      );
    return count;
  } finally {
    await copy.abandon();
  }
}

/**
 * A snapshot's tables, as of `commit` (this database's head now), with their definitions; for a
 * shallow clone (`base`), each table's rows are a snapshot base at that commit.
 */
async function loadSnapshot(
  client: pg.Client,
  storage: RemoteStorage,
  address: string,
  commit: string,
  base: boolean,
) {
  const head = await localHead(client);
  const copy = new CopyIn(client);
  const tables: string[] = [];
  let first = true;
  let ended = false;
  try {
    // Strata's own writes: the capture and DDL triggers let them through.
    await client.query("SELECT set_config('strata.applying', 'on', true)");
    for await (const frame of readObjectFrames(storage, address)) {
      if (first) {
        const header = checkHeader(frame, address, SNAPSHOT_FORMAT);
        if (header.commit !== commit || head !== commit)
          throw new RemoteOperationError(
            `snapshot ${address} in ${storage.url} is of commit ${String(header.commit)}, not of ${commit}`,
            "XX001",
          );
        first = false;
      } else if (frame.type === "section" && frame.header.section === "table") {
        const rel = String(frame.header.rel);
        tables.push(rel);
        await client.query("SELECT strata.apply_definition($1, 'schema', $2)", [
          rel,
          JSON.stringify(frame.header.definition),
        ]);
        copy.start(
          `COPY ${await tableFor(client, rel)} (${(frame.header.columns as string[]).map(quoteIdent).join(", ")}) FROM STDIN`,
        );
      } else if (frame.type === "section" && frame.header.section === "end") ended = true;
      else if (frame.type === "data") await copy.write(frame.bytes);
      else if (frame.type === "end") await copy.end();
    }
    if (!ended) throw new RemoteOperationError(`snapshot ${address} in ${storage.url} is truncated`, "XX001");
    for (const rel of tables) {
      if (base) await client.query("SELECT strata.shallow_base_table($1)", [rel]);
      await client.query("SELECT strata.finish_snapshot_table($1)", [rel]);
    }
  } finally {
    await copy.abandon();
  }
}

/** The table a pulled commit's or snapshot's rows go to, with Strata's own writes let through its triggers. */
async function tableFor(client: pg.Client, rel: string): Promise<string> {
  const { rows } = await client.query<{ tbl: string | null }>(
    "SELECT set_config('strata.applying', 'on', true), strata.regclass_of($1)::text AS tbl",
    [rel],
  );
  if (!rows[0]?.tbl)
    throw new RemoteOperationError(`a pulled commit copies table ${rel}, which it did not make`, "XX001");
  return rows[0].tbl;
}
