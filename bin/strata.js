#!/usr/bin/env -S node --max-semi-space-size=4
// The strata executable: runs the compiled CLI (built by `npm ci` through the `prepare` script).
// V8's young generation is kept small (4 MB semi-spaces): at full apply speed the default lets
// short-lived garbage push the process past its documented memory bound (docs/decisions.md, 12).
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
