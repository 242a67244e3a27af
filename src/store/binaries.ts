// Finds the PostgreSQL server binaries (initdb, postgres, pg_ctl) on this machine.
//
// Order: an explicit directory (config `store.bin_dir` or STRATA_PG_BIN), PATH, `pg_config --bindir`,
// then the distribution layouts (/usr/lib/postgresql/<major>/bin, newest major first, and
// /usr/local/pgsql/bin). Debian puts only wrappers on PATH, so the last step is the usual hit there.
import { execFileSync } from "node:child_process";
import { accessSync, constants, readdirSync } from "node:fs";
import { delimiter, join } from "node:path";

export interface PgBinaries {
  dir: string;
  initdb: string;
  postgres: string;
  pgCtl: string;
  /** Major version of the server binaries, e.g. 15. */
  major: number;
}

const REQUIRED = ["initdb", "postgres", "pg_ctl"] as const;

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function hasServerBinaries(dir: string): boolean {
  return REQUIRED.every((name) => isExecutable(join(dir, name)));
}

function candidateDirs(explicit?: string): string[] {
  const dirs: string[] = [];
  if (explicit) return [explicit];
  if (process.env.STRATA_PG_BIN) return [process.env.STRATA_PG_BIN];
  for (const dir of (process.env.PATH ?? "").split(delimiter)) if (dir) dirs.push(dir);
  try {
    const out = execFileSync("pg_config", ["--bindir"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    if (out.trim()) dirs.push(out.trim());
  } catch {
    // pg_config is optional.
  }
  try {
    const majors = readdirSync("/usr/lib/postgresql")
      .filter((name) => /^\d+$/.test(name))
      .sort((a, b) => Number(b) - Number(a));
    for (const major of majors) dirs.push(join("/usr/lib/postgresql", major, "bin"));
  } catch {
    // Not a Debian layout.
  }
  dirs.push("/usr/local/pgsql/bin");
  return dirs;
}

/**
 * A client program of PostgreSQL's (pg_dump, pg_restore): in `preferredDir` (the managed store's
 * binaries, the same version as the server) if it is there, else where the server binaries are
 * looked for. Throws, naming where it looked, when there is none.
 */
export function findClientProgram(name: string, preferredDir?: string): string {
  const tried = [...(preferredDir ? [preferredDir] : []), ...candidateDirs()];
  const dir = tried.find((d) => isExecutable(join(d, name)));
  if (!dir)
    throw new Error(
      `${name} not found; looked in: ${tried.join(", ")}. Install the PostgreSQL client programs (Debian/Ubuntu: \`apt-get install postgresql-client\`), or set STRATA_PG_BIN to the directory that holds them`,
    );
  return join(dir, name);
}

export function findPgBinaries(explicitDir?: string): PgBinaries {
  const tried = candidateDirs(explicitDir);
  const dir = tried.find(hasServerBinaries);
  if (!dir) {
    throw new Error(
      `PostgreSQL server binaries (initdb, postgres, pg_ctl) not found; looked in: ${tried.join(", ")}. ` +
        "Install PostgreSQL 14-17 (Debian/Ubuntu: `apt-get install postgresql`), or set `store.bin_dir` " +
        "in config.yaml (or STRATA_PG_BIN) to the directory that holds them, or use `store.url` for an existing server.",
    );
  }
  const version = execFileSync(join(dir, "postgres"), ["--version"], { encoding: "utf8" });
  const match = /(\d+)(?:\.\d+)?/.exec(version);
  return {
    dir,
    initdb: join(dir, "initdb"),
    postgres: join(dir, "postgres"),
    pgCtl: join(dir, "pg_ctl"),
    major: match ? Number(match[1]) : 0,
  };
}

/**
 * Whether these server binaries were built with lz4, for TOAST compression. `postgres -C` checks
 * the value against the build's list and prints it without starting a server (and, given -C
 * first, runs as root too); it reads the configuration, so it needs an initialised PGDATA.
 */
export function supportsLz4(bin: PgBinaries, pgdata: string): boolean {
  try {
    execFileSync(
      bin.postgres,
      ["-C", "default_toast_compression", "-D", pgdata, "-c", "default_toast_compression=lz4"],
      { stdio: "ignore" },
    );
    return true;
  } catch {
    return false;
  }
}
