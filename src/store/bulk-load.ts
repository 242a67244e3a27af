// Checkpoints spaced out on the managed store: always somewhat (steadyMaxWalMb), and far apart
// while a snapshot fills it.
//
// Every managed store has data checksums (pg_rewind needs them), and with checksums the first
// change to a page after a checkpoint logs the whole page, a hint bit included. A snapshot builds
// each table's keys after its rows are in, and that build sets the hint bits of every row it reads:
// each checkpoint during the copy turned the pages copied before it into full-page images in the
// key build's WAL (about 267,000 of them, 2 GB, for the 2.2 GB snapshot of bench/snapshot.ts, on
// its critical path). PostgreSQL's advice for bulk loads ("Populating a Database": a larger
// max_wal_size while loading) removes them. While a snapshot runs, max_wal_size and
// checkpoint_timeout are raised in a file of their own that strata.conf includes, and the file is
// removed when it ends. A start of the store removes it too: a snapshot cut short by a crash
// starts over and raises them again.
import { rmSync, statfsSync } from "node:fs";
import { join } from "node:path";
import type pg from "pg";
import { BULK_LOAD_SETTINGS_FILE, type ClusterSpec, clusterPaths, writeOwned } from "./cluster.ts";

const MB = 1024 * 1024;

/**
 * The managed store's max_wal_size when store.settings does not set one, in MB: 4 GB, or an
 * eighth of the free space if that is less, never below PostgreSQL's default (1 GB). History
 * makes the store write several times the WAL of a plain replica for the same changes (about
 * 1 kB per pgbench row change against 170 bytes), and with PostgreSQL's default a catch-up of a
 * million such changes checkpointed on WAL volume and logged 41,000 full-page images, a third of
 * its WAL (docs/decisions.md, section 8).
 */
export function steadyMaxWalMb(freeBytes: number): number {
  return Math.max(1024, Math.min(4096, Math.floor(freeBytes / 8 / MB)));
}

/**
 * The max_wal_size that lets `bytes` of new data in without a checkpoint (one starts when the WAL
 * since the last reaches about max_wal_size / (1 + checkpoint_completion_target)), in MB; never
 * more than a quarter of the free space, so that the WAL kept meanwhile cannot fill the disk.
 */
export function bulkLoadMaxWalMb(bytes: number, freeBytes: number, currentMb: number): number {
  const wanted = Math.ceil((2 * bytes) / MB) + 1024;
  return Math.max(currentMb, Math.min(wanted, Math.floor(freeBytes / 4 / MB)));
}

/**
 * Raise the store's checkpoint distance for a snapshot of about `bytes` (one process runs one
 * snapshot at a time); resolves a function that puts it back. `client` is a superuser session on
 * the store (for pg_reload_conf).
 */
export async function spaceOutCheckpoints(
  spec: ClusterSpec,
  client: pg.Client,
  bytes: number,
): Promise<{ maxWalMb: number; raised: boolean; restore: () => Promise<void> }> {
  const pgdata = clusterPaths(spec).pgdata;
  const file = join(pgdata, BULK_LOAD_SETTINGS_FILE);
  const current = Number(
    (await client.query("SELECT setting FROM pg_settings WHERE name = 'max_wal_size'")).rows[0].setting,
  );
  const { bavail, bsize } = statfsSync(pgdata);
  const mb = bulkLoadMaxWalMb(bytes, bavail * bsize, current);
  const raised = mb > current;
  if (raised) {
    writeOwned(
      spec,
      file,
      `# written by Strata while an initial snapshot runs (removed when it ends)\nmax_wal_size = '${mb}MB'\ncheckpoint_timeout = '1d'\n`,
    );
    await client.query("SELECT pg_reload_conf()");
  }
  return {
    maxWalMb: mb,
    raised,
    restore: async () => {
      if (!raised) return;
      rmSync(file, { force: true });
      // A session lost with the snapshot: the store reads the file's absence at its next reload.
      await client.query("SELECT pg_reload_conf()").catch(() => {});
    },
  };
}
