// What a cluster role means for the managed store (DESIGN.md decision 8): a primary's store is an
// ordinary Postgres primary; a standby's is a Postgres hot standby (standby.signal) that streams
// WAL from the primary's store through this node's tunnel (tunnel.ts); the role and epoch are
// store settings too, so that SHOW and dolt.setting() read them in any session, and a role change
// is a configuration reload.
//
//   empty data directory, standby   pg_basebackup through the tunnel (with progress)
//   primary → standby               clean stop, standby.signal, start (streams once a primary is found)
//   a store that was a primary      pg_rewind from the new primary before it follows it
//   standby → primary               pg_promote(): a new timeline, writes open
import { execFile, execFileSync, spawn } from "node:child_process";
import { existsSync, realpathSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Logger } from "../log.ts";
import { findClientProgram } from "../store/binaries.ts";
import {
  asUser,
  CLUSTER_SETTINGS_FILE,
  type ClusterSpec,
  clusterPaths,
  own,
  quoteSetting,
  writeOwned,
} from "../store/cluster.ts";
import type { RoleState } from "./roles.ts";
import { synchronousStandbyNames } from "./sync-commit.ts";

/** How the store reaches the primary's store: libpq keywords for the tunnel's socket. */
export interface TunnelConninfo {
  /** The tunnel's socket directory, and the port that names its socket. */
  host: string;
  port: number;
  user: string;
  password: string;
}

export function conninfoString(tunnel: TunnelConninfo, extra: Record<string, string> = {}): string {
  const words = {
    host: tunnel.host,
    port: String(tunnel.port),
    user: tunnel.user,
    password: tunnel.password,
    ...extra,
  };
  return Object.entries(words)
    .map(([k, v]) => `${k}='${v.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`)
    .join(" ");
}

/** A standby name no standby has: commits on a read-only node's store wait for it for ever. */
export const READ_ONLY_FENCE = "strata_read_only_fence";

/** The replication slot a node streams through, on whichever peer is primary. */
export const slotName = (nodeId: string) => `strata_standby_${nodeId}`;

/**
 * The role settings file (read after strata.conf, so it wins): the role and epoch for SHOW, and
 * for a standby where its WAL comes from. Not a primary: new transactions are read-only.
 */
export function writeRoleSettings(
  spec: ClusterSpec,
  state: RoleState,
  standby?: { tunnel: TunnelConninfo; slot: string },
  options: { readOnly?: boolean; synchronous?: readonly string[] } = {},
): void {
  const settings: Record<string, string | number | boolean> = {
    "strata.dolt_cluster_role": state.role,
    "strata.dolt_cluster_role_epoch": String(state.epoch),
    // A primary on its way to standby is read-only while it waits for its standbys.
    default_transaction_read_only: options.readOnly ?? state.role !== "primary",
  };
  const readOnly = settings.default_transaction_read_only === true;
  if (readOnly && !standby) {
    // A store that is not a standby's can still commit a transaction begun READ WRITE (the
    // setting above is a default). Commits wait for a standby that never comes instead: none is
    // acknowledged while the node is read-only, and the sessions ended then get an error.
    settings.synchronous_standby_names = `"${READ_ONLY_FENCE}"`;
    settings.synchronous_commit = "on";
  } else if (options.synchronous?.length) {
    // Commits wait until every listed standby has applied them (sync-commit.ts).
    settings.synchronous_standby_names = synchronousStandbyNames(options.synchronous);
    settings.synchronous_commit = "remote_apply";
  }
  if (standby) {
    settings.primary_conninfo = conninfoString(standby.tunnel, { application_name: standby.slot });
    settings.primary_slot_name = standby.slot;
    settings.recovery_target_timeline = "latest";
    settings.hot_standby = true;
    // A walreceiver whose tunnel found no primary tries again soon (default 5 s).
    settings.wal_retrieve_retry_interval = "500ms";
    // Replies as soon as WAL is applied, so that the primary's view of the standby is current.
    settings.wal_receiver_status_interval = "1s";
  }
  const lines = Object.entries(settings).map(([k, v]) => `${k} = ${quoteSetting(v)}`);
  const file = join(clusterPaths(spec).pgdata, CLUSTER_SETTINGS_FILE);
  writeOwned(spec, file, `# written by Strata: this node's cluster role\n${lines.join("\n")}\n`);
}

const signalFile = (spec: ClusterSpec) => join(clusterPaths(spec).pgdata, "standby.signal");

/** Whether the store starts as a standby (standby.signal in PGDATA). */
export const isStandbyStore = (spec: ClusterSpec) => existsSync(signalFile(spec));

export function setStandbySignal(spec: ClusterSpec, standby: boolean): void {
  const file = signalFile(spec);
  if (!standby) {
    rmSync(file, { force: true });
    return;
  }
  writeOwned(spec, file, "");
}

/**
 * A standby's first store: a base backup of the primary's store, streamed through the tunnel
 * (WAL included, so it is consistent by itself), with progress in the log every few seconds.
 */
export async function takeBaseBackup(
  spec: ClusterSpec,
  tunnel: TunnelConninfo,
  slot: string,
  log: Logger,
): Promise<void> {
  const { pgdata } = clusterPaths(spec);
  own(spec, spec.root, 0o700);
  rmSync(pgdata, { recursive: true, force: true });
  const args = [
    "-D",
    pgdata,
    "-d",
    conninfoString(tunnel, { application_name: "strata base backup" }),
    "-X",
    "stream",
    "-c",
    "fast",
    "-S",
    slot,
    "-P",
    "-N",
  ];
  log.info({ pgdata, slot }, "cluster: taking a base backup of the primary's store");
  const started = Date.now();
  await new Promise<void>((resolveBackup, reject) => {
    const child = spawn(serverProgram(spec, "pg_basebackup"), args, {
      ...asUser(spec),
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    let lastLog = 0;
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => {
      stderr = (stderr + chunk).slice(-4000);
      // -P writes "12345/67890 kB (18%), 0/1 tablespace" lines ended by \r.
      const progress = /(\d+)\/(\d+) kB \((\d+)%\)[^\r\n]*[\r\n]*$/.exec(stderr);
      if (progress && Date.now() - lastLog > 2_000) {
        lastLog = Date.now();
        const done = Number(progress[1]) / 1024;
        const total = Number(progress[2]) / 1024;
        const seconds = (Date.now() - started) / 1000;
        log.info(
          {
            done_mb: Math.round(done),
            total_mb: Math.round(total),
            percent: Number(progress[3]),
            mb_per_s: Math.round((done / Math.max(seconds, 0.001)) * 10) / 10,
          },
          "cluster: base backup in progress",
        );
      }
    });
    child.on("error", reject);
    child.on("close", (code) => {
      if (code === 0) resolveBackup();
      else {
        const lines = stderr.split(/[\r\n]+/).filter((l) => l.trim() && !/kB \(\d+%\)/.test(l));
        reject(
          new Error(
            `the base backup from the primary failed: ${lines.slice(-3).join("; ") || `exit ${code}`}`,
          ),
        );
      }
    });
  });
  log.info({ seconds: Math.round((Date.now() - started) / 100) / 10 }, "cluster: base backup complete");
}

/**
 * Bring a store that was a primary onto the new primary's history: pg_rewind copies back what
 * diverged since the last common checkpoint (nothing, after a graceful demotion). The store
 * must be stopped. Resolves whether anything was rewound.
 */
export async function rewindStore(spec: ClusterSpec, tunnel: TunnelConninfo, log: Logger): Promise<boolean> {
  const { pgdata } = clusterPaths(spec);
  const args = [
    `--target-pgdata=${pgdata}`,
    `--source-server=${conninfoString(tunnel, { dbname: "postgres", application_name: "strata rewind" })}`,
  ];
  // pg_rewind reports on stderr, success included.
  const output = await new Promise<string>((resolveRun, reject) => {
    execFile(
      serverProgram(spec, "pg_rewind"),
      args,
      { ...asUser(spec), maxBuffer: 4 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const text = `${stdout}${stderr}`.trim();
        if (err)
          reject(
            new Error(
              `pg_rewind (bringing this former primary onto the new primary's history) failed: ${text || err.message}`,
            ),
          );
        else resolveRun(text);
      },
    );
  });
  const rewound = !/no rewind required/i.test(output);
  log.info(
    { rewound, detail: output.split("\n").slice(-1)[0] },
    "cluster: store checked against the new primary",
  );
  return rewound;
}

/**
 * A program that must match the store's server version (pg_basebackup, pg_rewind): beside the
 * real postgres binary first (the store's bin_dir may hold only links to the server programs).
 */
function serverProgram(spec: ClusterSpec, name: string): string {
  const program = findClientProgram(name, dirname(realpathSync(spec.bin.postgres)));
  // Found elsewhere than beside the server, it may be another version's, and it would refuse the
  // store with "incompatible server version" at every retry: say what to install instead.
  const version = /\(PostgreSQL\) (\d+)/.exec(execFileSync(program, ["--version"], { encoding: "utf8" }));
  const major = version ? Number(version[1]) : spec.bin.major;
  // pg_basebackup takes servers older than itself; pg_rewind only its own version's data.
  if (name === "pg_rewind" ? major !== spec.bin.major : major < spec.bin.major)
    throw new Error(
      `${program} is PostgreSQL ${major}'s, and the store is PostgreSQL ${spec.bin.major}: install PostgreSQL ${spec.bin.major}'s ${name} (Debian/Ubuntu: postgresql-${spec.bin.major}), or set store.bin_dir to a directory that holds it beside the server programs`,
    );
  return program;
}
