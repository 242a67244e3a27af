// Lifecycle of one PostgreSQL cluster that Strata owns: initdb, start, stop, and recovery after
// Strata itself was killed (an orphaned postmaster still running, or a stale postmaster.pid).
//
// Layout under `root` (owned by the store's OS user when Strata runs as root):
//
//   root/pgdata/         PGDATA (postgresql.conf includes strata.conf, rewritten at every start)
//   root/run/            unix socket directory (or a short /tmp directory if root's path is long)
//   root/postgres.log    server log
//
// The same code starts the managed store and the throwaway clusters of the test suite.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chownSync,
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import type { PgBinaries } from "./binaries.ts";
import type { OsUser } from "./os-user.ts";

const run = promisify(execFile);

export interface ClusterSpec {
  root: string;
  bin: PgBinaries;
  osUser?: OsUser;
  superuser: string;
  password: string;
  /** TCP port; also names the unix socket (.s.PGSQL.<port>). */
  port: number;
  /** '' listens on the unix socket only. */
  listenAddresses: string;
  settings?: Record<string, string | number | boolean>;
  /** Extra pg_hba.conf lines, placed before the defaults. */
  hba?: string[];
}

export interface ClusterPaths {
  pgdata: string;
  socketDir: string;
  logFile: string;
}

/**
 * The file in PGDATA with an initial snapshot's checkpoint settings (bulk-load.ts), read after
 * strata.conf's own; removed at every start, since no snapshot runs then.
 */
export const BULK_LOAD_SETTINGS_FILE = "strata-bulk-load.conf";

/** The file in PGDATA holding a cluster node's role settings (read after strata.conf). */
export const CLUSTER_SETTINGS_FILE = "strata-cluster.conf";

// Unix socket paths are limited to 107 bytes; ".s.PGSQL.65535" takes 15 of them.
const MAX_SOCKET_DIR = 90;

export function clusterPaths(spec: Pick<ClusterSpec, "root">): ClusterPaths {
  const root = resolve(spec.root);
  let socketDir = join(root, "run");
  if (socketDir.length > MAX_SOCKET_DIR) socketDir = shortSocketDir(root);
  return { pgdata: join(root, "pgdata"), socketDir, logFile: join(root, "postgres.log") };
}

const shortSocketDir = (key: string) =>
  join("/tmp", `strata-${createHash("sha1").update(key).digest("hex").slice(0, 12)}`);

/** A directory for unix sockets under `root`, or a short one in /tmp when that path is too long. */
export function socketDirFor(root: string, name: string): string {
  const dir = join(resolve(root), name);
  return dir.length <= MAX_SOCKET_DIR ? dir : shortSocketDir(dir);
}

/** Options that run a child process as the store's OS user, with no PG* environment. */
export function asUser(spec: ClusterSpec) {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: "C", LANG: "C" };
  for (const key of Object.keys(env)) if (key.startsWith("PG")) delete env[key];
  if (!spec.osUser) return { env };
  return {
    env: { ...env, HOME: "/tmp", USER: spec.osUser.name },
    uid: spec.osUser.uid,
    gid: spec.osUser.gid,
  };
}

export function own(spec: ClusterSpec, path: string, mode: number) {
  mkdirSync(path, { recursive: true, mode });
  if (spec.osUser) chownSync(path, spec.osUser.uid, spec.osUser.gid);
}

export async function exec(spec: ClusterSpec, file: string, args: string[], what: string): Promise<string> {
  try {
    const { stdout } = await run(file, args, { ...asUser(spec), maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    const detail = (e.stderr || e.stdout || e.message).trim();
    throw new Error(`${what} failed: ${detail}`);
  }
}

export function quoteSetting(value: string | number | boolean): string {
  if (typeof value === "number") return String(value);
  if (typeof value === "boolean") return value ? "on" : "off";
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

export function isInitialised(spec: Pick<ClusterSpec, "root">): boolean {
  return existsSync(join(clusterPaths(spec).pgdata, "PG_VERSION"));
}

/** initdb, if the cluster does not exist yet. Returns true when it created one. */
export async function initCluster(spec: ClusterSpec): Promise<boolean> {
  const paths = clusterPaths(spec);
  if (isInitialised(spec)) return false;
  own(spec, resolve(spec.root), 0o700);
  await checkAccess(spec, resolve(spec.root));
  // A half-made PGDATA from an interrupted initdb is of no use: start over.
  rmSync(paths.pgdata, { recursive: true, force: true });
  const pwfile = join(resolve(spec.root), ".initdb-pw");
  writeFileSync(pwfile, `${spec.password}\n`, { mode: 0o600 });
  if (spec.osUser) chownSync(pwfile, spec.osUser.uid, spec.osUser.gid);
  try {
    await exec(
      spec,
      spec.bin.initdb,
      [
        "-D",
        paths.pgdata,
        "-U",
        spec.superuser,
        `--pwfile=${pwfile}`,
        "--auth=scram-sha-256",
        "-E",
        "UTF8",
        "--locale=C",
        "--data-checksums",
      ],
      "initdb",
    );
  } finally {
    rmSync(pwfile, { force: true });
  }
  const conf = join(paths.pgdata, "postgresql.conf");
  writeFileSync(conf, `${readFileSync(conf, "utf8")}\ninclude_if_exists = 'strata.conf'\n`);
  return true;
}

async function checkAccess(spec: ClusterSpec, dir: string) {
  if (!spec.osUser) return;
  try {
    await run("/bin/sh", ["-c", 'test -w "$1" && test -x "$1"', "sh", dir], asUser(spec));
  } catch {
    throw new Error(
      `the store runs as the unprivileged user "${spec.osUser.name}" (Strata runs as root), but that user cannot ` +
        `write to ${dir}: a parent directory is not traversable by it. Put data_dir somewhere it can reach ` +
        "(e.g. under /var/lib or /srv), or set store.os_user to a user that can.",
    );
  }
}

function writeRuntimeConfig(spec: ClusterSpec, paths: ClusterPaths) {
  const settings: Record<string, string | number | boolean> = {
    listen_addresses: spec.listenAddresses,
    port: spec.port,
    unix_socket_directories: paths.socketDir,
    unix_socket_permissions: "0770",
    ...spec.settings,
  };
  const lines = Object.entries(settings).map(([k, v]) => `${k} = ${quoteSetting(v)}`);
  // A cluster node's role settings (src/cluster/store-roles.ts) go last: they change while running.
  writeOwned(
    spec,
    join(paths.pgdata, "strata.conf"),
    `# written by Strata at every start\n${lines.join("\n")}\ninclude_if_exists = '${BULK_LOAD_SETTINGS_FILE}'\ninclude_if_exists = '${CLUSTER_SETTINGS_FILE}'\n`,
  );
  rmSync(join(paths.pgdata, BULK_LOAD_SETTINGS_FILE), { force: true });
  const hba = [
    ...(spec.hba ?? []),
    "local all all scram-sha-256",
    "local replication all scram-sha-256",
    "host all all 127.0.0.1/32 scram-sha-256",
    "host replication all 127.0.0.1/32 scram-sha-256",
    "host all all ::1/128 scram-sha-256",
    "host replication all ::1/128 scram-sha-256",
  ];
  writeOwned(spec, join(paths.pgdata, "pg_hba.conf"), `${hba.join("\n")}\n`);
}

/**
 * Write a file in PGDATA, whole (a temporary file renamed over it), owned by the store's user like
 * the rest of PGDATA: pg_rewind, run as that user, rewrites the files it does not know, and one
 * owned by root made every rewind fail.
 */
export function writeOwned(spec: ClusterSpec, path: string, text: string) {
  writeFileSync(`${path}.tmp`, text, { mode: 0o600 });
  if (spec.osUser) chownSync(`${path}.tmp`, spec.osUser.uid, spec.osUser.gid);
  renameSync(`${path}.tmp`, path);
}

/** Is `pid` the postmaster of this data directory (not some other process that reused the pid)? */
function isOurPostmaster(pid: number, pgdata: string): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    // ESRCH: gone. EPERM: alive but another user's, so decided by its directory below.
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  try {
    // A postmaster runs in its data directory.
    return realpathSync(`/proc/${pid}/cwd`) === realpathSync(pgdata);
  } catch (err) {
    // No /proc (not Linux): trust kill(0). EACCES or a vanished process on Linux: not ours.
    return (err as NodeJS.ErrnoException).code === "ENOENT" && !existsSync("/proc/self");
  }
}

export type RecoveryAction = "none" | "stopped-orphan" | "removed-stale-pid";

/**
 * Start the cluster. Handles what a SIGKILLed Strata leaves behind: a postmaster still running
 * from the previous start (stopped, then started again with the current settings) and a
 * postmaster.pid whose process is gone or is another program (removed).
 */
export async function startCluster(
  spec: ClusterSpec,
  /** Told before a recovery step runs (stopping an orphan waits for its shutdown checkpoint). */
  recovering?: (action: RecoveryAction) => void,
): Promise<{ paths: ClusterPaths; recovery: RecoveryAction }> {
  const paths = clusterPaths(spec);
  own(spec, paths.socketDir, 0o700);
  let recovery: RecoveryAction = "none";
  const pidFile = join(paths.pgdata, "postmaster.pid");
  if (existsSync(pidFile)) {
    const pid = Number(readFileSync(pidFile, "utf8").split("\n")[0]);
    if (pid > 0 && isOurPostmaster(pid, paths.pgdata)) {
      recovering?.("stopped-orphan");
      await exec(
        spec,
        spec.bin.pgCtl,
        ["stop", "-D", paths.pgdata, "-m", "fast", "-w", "-t", "120"],
        "stopping the orphaned store postmaster",
      );
      recovery = "stopped-orphan";
    } else {
      recovering?.("removed-stale-pid");
      rmSync(pidFile, { force: true });
      recovery = "removed-stale-pid";
    }
  }
  writeRuntimeConfig(spec, paths);
  try {
    await exec(
      spec,
      spec.bin.pgCtl,
      ["start", "-D", paths.pgdata, "-l", paths.logFile, "-w", "-t", "120", "-s"],
      "starting PostgreSQL",
    );
  } catch (err) {
    throw new Error(
      `${(err as Error).message}\n--- last lines of ${paths.logFile} ---\n${tail(paths.logFile, 20)}`,
    );
  }
  return { paths, recovery };
}

export async function stopCluster(spec: ClusterSpec, mode: "fast" | "immediate" = "fast"): Promise<void> {
  const paths = clusterPaths(spec);
  if (!existsSync(join(paths.pgdata, "postmaster.pid"))) return;
  await exec(
    spec,
    spec.bin.pgCtl,
    ["stop", "-D", paths.pgdata, "-m", mode, "-w", "-t", "120", "-s"],
    "stopping PostgreSQL",
  );
}

function tail(file: string, lines: number): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}
