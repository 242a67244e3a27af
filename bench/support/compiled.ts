// Benchmarks run Strata as users do: the compiled CLI (bin/strata.js runs dist/cli/main.js), not
// the TypeScript sources through tsx as the tests do. tsx transpiles every module at start-up
// (inside the timed span) and keeps a loader thread, which would count against Strata in the
// timings and its CPU figures.
import { execFileSync } from "node:child_process";
import { join } from "node:path";

const ROOT = join(import.meta.dirname, "..", "..");
let built = false;

/**
 * Build dist/ from the current sources (so that it is never stale), and make StrataProcess run it.
 * STRATA_RUN_COMPILED=0 keeps the sources through tsx (to compare the two).
 */
export function useCompiledStrata(): void {
  // Built whatever the variable says (but "0"): a "1" left in a shell must not run a stale dist/.
  if (process.env.STRATA_RUN_COMPILED === "0" || built) return;
  process.stderr.write("building dist/ (npm run build) so that Strata runs compiled, as users run it\n");
  execFileSync(
    process.execPath,
    [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.build.json"],
    {
      cwd: ROOT,
      stdio: ["ignore", "inherit", "inherit"],
    },
  );
  process.env.STRATA_RUN_COMPILED = "1";
  built = true;
}
