// Tags in a remote: `refs/tags/<name>` points at the tagged commit and at a small tag object
// (JSON: name, commit, tagger, email, date, message), so that a replica gets the tag as it was
// made. Tags are pushed with the branch (the ones the remote has not seen from this database:
// strata.remote_tags) and pulled by dolt_pull, or at transaction start by a read replica that
// replicates all heads. A tag that exists in the remote for another commit is left as it is
// (tags do not move), and the log says so. Deletes travel too: a tag this database pushed (or
// pulled) and has since deleted is deleted from the remote by its next push, and a read replica
// drops a tag it pulled once the remote no longer has it.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import type { Logger } from "../log.ts";
import { OBJECT_VERSION, RemoteOperationError } from "./pack-objects.ts";
import type { RefValue, RemoteStorage } from "./storage.ts";

const TAG_FORMAT = "strata-tag";

interface TagRow {
  name: string;
  commit_hash: string;
  tagger: string;
  email: string;
  date: string;
  message: string;
}

/**
 * Push the tags the remote has not seen from this database; returns how many went. `record: false`
 * (a remote the database does not name) keeps no account in strata.remote_tags: every tag is
 * checked against the remote's ref instead.
 */
export async function pushTags(
  client: pg.Client,
  storage: RemoteStorage,
  remote: string,
  log: Logger,
  options: { record?: boolean } = {},
) {
  const { rows } = await client.query<TagRow>(
    `SELECT t.name, t.commit_hash, t.tagger, t.email, t.date::text AS date, t.message
       FROM strata.tags t LEFT JOIN strata.remote_tags r ON r.remote = $1 AND r.name = t.name
      WHERE r.commit_hash IS DISTINCT FROM t.commit_hash ORDER BY t.name`,
    [remote],
  );
  let pushed = 0;
  for (const tag of rows) {
    const refName = `tags/${tag.name}`;
    const current = await storage.readRef(refName);
    if (!current) {
      const address = await putTagObject(storage, tag);
      if (await storage.compareAndSwapRef(refName, null, { commit: tag.commit_hash, pack: address }))
        pushed++;
    } else if (current.commit !== tag.commit_hash) {
      log.warn(
        { remote, tag: tag.name, here: tag.commit_hash, there: current.commit },
        "tag not pushed: the remote has a tag of that name for another commit",
      );
      continue;
    }
    if (options.record === false) continue;
    await client.query(
      `INSERT INTO strata.remote_tags (remote, name, commit_hash) VALUES ($1, $2, $3)
       ON CONFLICT (remote, name) DO UPDATE SET commit_hash = excluded.commit_hash`,
      [remote, tag.name, tag.commit_hash],
    );
  }
  if (options.record !== false) pushed += await pushTagDeletes(client, storage, remote);
  return pushed;
}

/** Tags the remote has from this database that it deleted since: deleted there too (if unmoved). */
async function pushTagDeletes(client: pg.Client, storage: RemoteStorage, remote: string): Promise<number> {
  const { rows } = await client.query<{ name: string; commit_hash: string }>(
    `SELECT r.name, r.commit_hash FROM strata.remote_tags r
      WHERE r.remote = $1 AND NOT EXISTS (SELECT 1 FROM strata.tags t WHERE t.name = r.name) ORDER BY r.name`,
    [remote],
  );
  let deleted = 0;
  for (const gone of rows) {
    const refName = `tags/${gone.name}`;
    const current = await storage.readRef(refName);
    // A tag someone else re-made for another commit is theirs now: left alone.
    if (current?.commit === gone.commit_hash && (await storage.compareAndSwapRef(refName, current, null)))
      deleted++;
    await client.query("DELETE FROM strata.remote_tags WHERE remote = $1 AND name = $2", [remote, gone.name]);
  }
  return deleted;
}

async function putTagObject(storage: RemoteStorage, tag: TagRow): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "strata-tag-"));
  try {
    const file = join(dir, "tag.json");
    await writeFile(file, JSON.stringify({ format: TAG_FORMAT, version: OBJECT_VERSION, ...tag }));
    return await storage.putObjectFile(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Take the remote's tags whose commits this database has; returns how many were new or moved.
 * `prune` (a read replica): also drop the tags pulled from this remote that it no longer has.
 */
export async function pullTags(
  client: pg.Client,
  storage: RemoteStorage,
  remote: string,
  options: { prune?: boolean } = {},
): Promise<number> {
  const refs = await storage.listRefs("tags/");
  if (options.prune) await pruneTags(client, remote, refs);
  if (refs.size === 0) return 0;
  const { rows } = await client.query<{ name: string; commit_hash: string; known: boolean }>(
    `SELECT r.name, r.commit_hash, EXISTS (SELECT 1 FROM strata.commits c WHERE c.hash = r.commit_hash) AS known
       FROM jsonb_to_recordset($1::jsonb) AS r(name text, commit_hash text)
      WHERE NOT EXISTS (SELECT 1 FROM strata.tags t WHERE t.name = r.name AND t.commit_hash = r.commit_hash)`,
    [
      JSON.stringify(
        [...refs].map(([name, ref]) => ({ name: name.slice("tags/".length), commit_hash: ref.commit })),
      ),
    ],
  );
  let taken = 0;
  for (const row of rows.filter((r) => r.known)) {
    const ref = refs.get(`tags/${row.name}`)!;
    const tag = await readTagObject(storage, ref.pack);
    if (tag.name !== row.name || tag.commit_hash !== ref.commit)
      throw new RemoteOperationError(
        `tag ${row.name} in ${storage.url} does not match its object ${ref.pack}`,
        "XX001",
        "the remote is damaged: push the tag again from a database that has it",
      );
    await client.query(
      `INSERT INTO strata.tags (name, commit_hash, tagger, email, date, message) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (name) DO UPDATE SET commit_hash = excluded.commit_hash, tagger = excluded.tagger,
         email = excluded.email, date = excluded.date, message = excluded.message`,
      [tag.name, tag.commit_hash, tag.tagger, tag.email, tag.date, tag.message],
    );
    await client.query(
      `INSERT INTO strata.remote_tags (remote, name, commit_hash) VALUES ($1, $2, $3)
       ON CONFLICT (remote, name) DO UPDATE SET commit_hash = excluded.commit_hash`,
      [remote, tag.name, tag.commit_hash],
    );
    taken++;
  }
  return taken;
}

async function pruneTags(client: pg.Client, remote: string, refs: Map<string, RefValue>): Promise<void> {
  const present = [...refs.keys()].map((name) => name.slice("tags/".length));
  await client.query(
    `WITH gone AS (
       DELETE FROM strata.remote_tags r WHERE r.remote = $1 AND NOT (r.name = ANY ($2::text[])) RETURNING r.name, r.commit_hash)
     DELETE FROM strata.tags t USING gone WHERE t.name = gone.name AND t.commit_hash = gone.commit_hash`,
    [remote, present],
  );
}

async function readTagObject(storage: RemoteStorage, address: string): Promise<TagRow> {
  const chunks: Buffer[] = [];
  // The stream checks the bytes against the address at its end: read it whole before trusting it.
  for await (const chunk of await storage.openObject(address)) chunks.push(chunk as Buffer);
  const tag = JSON.parse(Buffer.concat(chunks).toString()) as TagRow & { format?: string };
  if (tag.format !== TAG_FORMAT) throw new RemoteOperationError(`object ${address} is not a tag`, "XX001");
  return tag;
}
