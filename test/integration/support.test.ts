import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { freePort, PORT_RESERVATIONS, startPrimary } from "../support/postgres.ts";

test("the test harness starts a logical-replication primary", async () => {
  const primary = await startPrimary();
  after(() => primary.stop());
  const [row] = await primary.query("SHOW wal_level");
  assert.equal(row.wal_level, "logical");
});

test("freePort skips a port another live test process reserved, and takes over a dead one's", async () => {
  // Ports above the kernel's usual ephemeral range, offered by hand (nothing binds them here).
  const [held, next, stale] = [65011, 65012, 65013];
  await freePort(async () => 65010); // makes the directory
  const holder = spawn("sleep", ["30"]);
  after(() => holder.kill());
  const heldFile = join(PORT_RESERVATIONS, String(held));
  writeFileSync(heldFile, String(holder.pid));
  after(() => rmSync(heldFile, { force: true }));
  const offers = [held, next];
  assert.equal(await freePort(async () => offers.shift()!), next);
  assert.equal(readFileSync(heldFile, "utf8"), String(holder.pid), "the live holder keeps its port");

  const gone = spawnSync("true").pid;
  const staleFile = join(PORT_RESERVATIONS, String(stale));
  writeFileSync(staleFile, String(gone));
  const staleOffers = [stale, stale];
  assert.equal(await freePort(async () => staleOffers.shift()!), stale);
  assert.equal(readFileSync(staleFile, "utf8"), String(process.pid));
  assert.ok(existsSync(join(PORT_RESERVATIONS, String(next))));
});
