import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const LOG_MODULE = join(dirname(fileURLToPath(import.meta.url)), "../../src/log.ts");

/** stderr of a Node process that sets up Strata's log, then runs `body`. */
function stderrOf(body: string): string {
  const script = `import { createLogger, logProcessWarnings } from ${JSON.stringify(LOG_MODULE)};
const log = createLogger("info");
logProcessWarnings(log);
${body}`;
  try {
    execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    throw new Error("the script was expected to exit 3");
  } catch (err) {
    const e = err as { status?: number; stderr?: Buffer };
    assert.equal(e.status, 3, e.stderr?.toString());
    return e.stderr!.toString();
  }
}

test("Node's process warnings (a dependency's deprecation) become JSON log lines, not loose text", () => {
  const stderr = stderrOf(`
process.emitWarning("Calling client.query() when the client is already executing a query is deprecated", "DeprecationWarning", "DEP_PG");
process.emitWarning("NodeVersionSupportWarning: needs node >=22\\nsecond line");
setTimeout(() => process.exit(3), 50);`);
  const lines = stderr.trim().split("\n");
  assert.equal(lines.length, 2, stderr);
  const [deprecation, notice] = lines.map((l) => JSON.parse(l));
  assert.equal(deprecation.level, 40);
  assert.equal(deprecation.warning, "DeprecationWarning");
  assert.equal(deprecation.code, "DEP_PG");
  assert.match(deprecation.msg, /client\.query\(\)/);
  assert.equal(notice.warning, "Warning");
  assert.equal(notice.msg, "NodeVersionSupportWarning: needs node >=22\nsecond line");
});
