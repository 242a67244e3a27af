// A separate process racing on one ref of a remote, for the remote contract tests
// (remote-contract.ts): a directory, or a remote URL (s3://... with the S3 settings as JSON in
// STRATA_TEST_S3_SETTINGS).
// Each step reads the ref and compare-and-swaps it to a counter one higher (kept in the commit
// field), reading again whenever it loses, so lost updates would show in the final count.
//
//   node --import tsx test/support/remote-race-worker.ts <remote dir | URL> <ref> <increments | forever>
//
// Prints "ready" once started, then waits for a line on stdin, so that racers start together;
// prints "done <losses>" at the end (races it lost, to show that it did race). Exits when its
// stdin closes, so a "forever" worker never outlives the test process.

import { once } from "node:events";
import { DirectoryRemote } from "../../src/remotes/directory-remote.ts";
import { openRemoteStorage, type RefValue } from "../../src/remotes/storage.ts";

const PACK = "0".repeat(64);

const [dir, ref, count] = process.argv.slice(2);
if (!dir || !ref || !count)
  throw new Error("usage: remote-race-worker.ts <remote dir | URL> <ref> <increments | forever>");
const increments = count === "forever" ? Number.POSITIVE_INFINITY : Number(count);

const remote = dir.includes("://")
  ? openRemoteStorage(dir, { s3: JSON.parse(process.env.STRATA_TEST_S3_SETTINGS ?? "{}") })
  : new DirectoryRemote(dir);
let losses = 0;
process.stdout.write("ready\n");
await once(process.stdin, "data");
// The test keeps stdin open: when it closes (the test process died), this worker exits too.
process.stdin.on("end", () => process.exit(1));
for (let done = 0; done < increments; ) {
  const current = await remote.readRef(ref);
  const next: RefValue = { commit: String(Number(current?.commit ?? "0") + 1), pack: PACK };
  if (await remote.compareAndSwapRef(ref, current, next)) done++;
  else losses++;
}
process.stdout.write(`done ${losses}\n`);
process.stdin.destroy();
