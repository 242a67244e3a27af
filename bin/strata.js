#!/usr/bin/env node
// The strata executable: runs the compiled CLI (built by `npm ci` through the `prepare` script).
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const compiled = join(root, "dist", "cli", "main.js");
if (!existsSync(compiled)) {
  process.stderr.write(
    "strata: the compiled CLI is missing (dist/cli/main.js); run `npm ci` or `npm run build` first\n",
  );
  process.exit(1);
}
await import(compiled);
