// dolt_pull / dolt_fetch: bring a remote branch's commits into this database, fast-forward only.
//
//   ref heads/main ──▶ pack P3 ──base_pack──▶ P2 ──▶ P1 (base null: the branch's first commit)
//
// The chain is walked back (reading each pack's first section only) to the pack that holds this
// database's head; then the packs are applied oldest first, in one store transaction. Every pack
// is checked against its address (SHA-256) as it streams: a damaged or truncated pack fails the
// transaction before it commits, so nothing of it is ever applied.
import { pipeline } from "node:stream";
import { createGunzip } from "node:zlib";
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import { PackFormatError, type PackFrame, PackFrameReader, type SectionHeader } from "./pack-frames.ts";
import {
  PACK_FORMAT,
  PACK_VERSION,
  type PackHeader,
  RemoteOperationError,
  recordRemoteBranch,
} from "./push.ts";
import { PULL_STAGING_SQL } from "./remote-sql.ts";
import type { RefValue, RemoteStorage } from "./storage.ts";

/** A chain longer than this is a loop (a damaged remote), not history. */
const MAX_CHAIN = 10_000_000;

export interface PullResult {
  status: "pulled" | "up-to-date";
  branch: string;
  head: string;
  commits: number;
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

export async function pullBranch(opts: {
  client: pg.Client;
  storage: RemoteStorage;
  remote: string;
  branch: string;
}): Promise<PullResult> {
  const { client, storage, remote, branch } = opts;
  const ref = await readBranch(storage, remote, branch);
  const head = await localHead(client);
  if (ref.commit === head) {
    await recordRemoteBranch(client, remote, branch, ref);
    return { status: "up-to-date", branch, head: ref.commit, commits: 0 };
  }
  const known = await client.query("SELECT 1 FROM strata.commits WHERE hash = $1", [ref.commit]);
  if (known.rowCount) return { status: "up-to-date", branch, head: head ?? ref.commit, commits: 0 }; // ahead
  const chain = await packsSince(storage, ref, head, remote, branch);
  let commits = 0;
  await client.query("BEGIN");
  try {
    await client.query("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'");
    await client.query(PULL_STAGING_SQL);
    for (const { address, skip } of chain) commits += await applyPack(client, storage, address, skip);
    await recordRemoteBranch(client, remote, branch, ref);
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  }
  return { status: "pulled", branch, head: ref.commit, commits };
}

export async function localHead(client: pg.Client): Promise<string | null> {
  const { rows } = await client.query<{ hash: string }>(
    "SELECT hash FROM strata.commits ORDER BY seq DESC LIMIT 1",
  );
  return rows[0]?.hash ?? null;
}

/** The packs to apply, oldest first, each with how many of its first commits this database has. */
async function packsSince(
  storage: RemoteStorage,
  ref: RefValue,
  head: string | null,
  remote: string,
  branch: string,
): Promise<{ address: string; skip: number }[]> {
  const chain: { address: string; skip: number }[] = [];
  let address: string | null = ref.pack;
  while (address) {
    if (chain.length > MAX_CHAIN)
      throw new RemoteOperationError(`remote "${remote}": pack chain loops`, "XX001");
    const header = await readPackHeader(storage, address);
    const at = head === null ? -1 : header.commits.indexOf(head);
    if (at >= 0) {
      chain.unshift({ address, skip: at + 1 });
      return chain;
    }
    chain.unshift({ address, skip: 0 });
    if (header.base === head) return chain;
    address = header.base_pack;
  }
  throw new RemoteOperationError(
    `this database's head ${head} is not in the history of ${remote}/${branch}`,
    "55000",
    "the database and the remote have diverged (the remote was force-pushed, or commits were made here): clone the remote again",
  );
}

async function readPackHeader(storage: RemoteStorage, address: string): Promise<PackHeader> {
  const stream = await storage.openObject(address);
  const gunzip = createGunzip();
  pipeline(stream, gunzip, () => {});
  const reader = new PackFrameReader();
  try {
    for await (const chunk of gunzip as AsyncIterable<Buffer>) {
      const frames = reader.push(chunk);
      if (frames.length) return checkHeader(frames[0], address);
    }
    reader.finish();
    throw new RemoteOperationError(`pack ${address} is empty`, "XX001");
  } catch (err) {
    throw damaged(err, storage, address);
  } finally {
    stream.destroy();
    gunzip.destroy();
  }
}

function checkHeader(frame: PackFrame, address: string): PackHeader {
  if (frame.type !== "section" || frame.header.section !== "pack" || frame.header.format !== PACK_FORMAT)
    throw new RemoteOperationError(`object ${address} is not a Strata pack`, "XX001");
  if (frame.header.version !== PACK_VERSION)
    throw new RemoteOperationError(
      `pack ${address} has format version ${String(frame.header.version)}; this Strata reads version ${PACK_VERSION}`,
      "0A000",
      "upgrade Strata on this server",
    );
  return frame.header as PackHeader;
}

const STAGING: Record<string, string> = {
  commits: "pull_commits",
  schema: "pull_schema",
  changes: "pull_changes",
  bases: "pull_bases",
};

/** Apply one pack's commits after its first `skip`; returns how many were applied. */
async function applyPack(
  client: pg.Client,
  storage: RemoteStorage,
  address: string,
  skip: number,
): Promise<number> {
  const stream = await storage.openObject(address);
  const gunzip = createGunzip();
  pipeline(stream, gunzip, () => {});
  const reader = new PackFrameReader();
  let applied = 0;
  let ended = false;
  let section: SectionHeader | undefined;
  let copy: ReturnType<typeof copyFrom> | undefined;
  let copyDone: Promise<void> | undefined;
  const startCopy = async (sql: string) => {
    const target = client.query(copyFrom(sql));
    copy = target;
    copyDone = new Promise<void>((resolve, reject) => {
      target.on("finish", resolve);
      target.on("error", reject);
    });
    copyDone.catch(() => {}); // awaited where the section ends, or given up with the pull
  };
  try {
    for await (const chunk of gunzip as AsyncIterable<Buffer>) {
      for (const frame of reader.push(chunk)) {
        if (frame.type === "section") {
          section = frame.header;
          const staging = STAGING[section.section];
          if (staging) await startCopy(`COPY pg_temp.${staging} FROM STDIN`);
          else if (section.section === "table" && Number(section.idx) > skip)
            await startCopy(
              `COPY ${await tableFor(client, String(section.rel))} (${(section.columns as string[]).map(quoteIdent).join(", ")}) FROM STDIN`,
            );
          else if (section.section === "apply") {
            for (let idx = Math.max(Number(section.from), skip + 1); idx <= Number(section.to); idx++) {
              await client.query("SELECT strata.apply_pulled($1)", [idx]);
              applied++;
            }
          } else if (section.section === "end") ended = true;
        } else if (frame.type === "data") {
          if (copy && !copy.write(frame.bytes)) await new Promise((resolve) => copy!.once("drain", resolve));
        } else {
          if (copy) {
            copy.end();
            await copyDone;
            copy = undefined;
          }
          if (section?.section === "apply")
            await client.query(
              "TRUNCATE pg_temp.pull_commits, pg_temp.pull_schema, pg_temp.pull_changes, pg_temp.pull_bases",
            );
        }
      }
    }
    reader.finish();
    if (!ended) throw new RemoteOperationError(`pack ${address} is truncated (no end section)`, "XX001");
    return applied;
  } catch (err) {
    throw damaged(err, storage, address);
  } finally {
    stream.destroy();
    gunzip.destroy();
    if (copy) {
      // A COPY left open would hold the connection: fail it (CopyFail), so ROLLBACK can run.
      copy.destroy(new Error("pull abandoned"));
      await copyDone?.catch(() => {});
    }
  }
}

/** A stream's failure (gzip, framing) named as the damaged pack it is; the store's errors as they are. */
function damaged(err: unknown, storage: RemoteStorage, address: string): unknown {
  const e = err as { code?: unknown; errno?: unknown };
  const fromZlib = typeof e.code === "string" && e.code.startsWith("Z_");
  if (!fromZlib && !(err instanceof PackFormatError)) return err;
  return new RemoteOperationError(
    `pack ${address} in remote ${storage.url} is damaged: ${(err as Error).message}`,
    "XX001",
    "the remote's copy is damaged or truncated: push the commit again from a database that has it, or restore the remote from a backup",
  );
}

/** The table a snapshot base's rows go to, with Strata's own writes let through its triggers. */
async function tableFor(client: pg.Client, rel: string): Promise<string> {
  const { rows } = await client.query<{ tbl: string | null }>(
    "SELECT set_config('strata.applying', 'on', true), strata.regclass_of($1)::text AS tbl",
    [rel],
  );
  if (!rows[0]?.tbl)
    throw new RemoteOperationError(`a pulled commit copies table ${rel}, which it did not make`, "XX001");
  return rows[0].tbl;
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
