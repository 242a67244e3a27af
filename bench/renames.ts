// npm run bench:renames: what a renamed column costs history reads (docs/version-control.md,
// "Renamed columns"), side by side in one run: two tables built alike on one standalone Strata,
// `plain` never renamed and `ren` with its key column and another renamed halfway through its
// history, so that the older half of its versions (the bulk load among them) is read through a
// rename.
//
//   node --import tsx bench/renames.ts [--rows N] [--commits N] [--runs N]
//
// Each table: --rows rows loaded in one commit, then --commits commits, each updating 1/--commits
// of the rows; `ren`'s columns are renamed in a commit of their own after the first half. Each query below runs once untimed, then --runs times; the table shows the median
// per table and the ratio renamed/plain. Results are checked to be equal between the two tables
// (under their own column names) before they are timed.
// Prints a table; writes bench/results/renames-<timestamp>.json.
import { parseArgs } from "node:util";
import type pg from "pg";
import { startStandaloneStrata } from "../test/support/strata.ts";
import { useCompiledStrata } from "./support/compiled.ts";
import { connect } from "./support/connection.ts";
import { fixed, summarize, table, thousands } from "./support/report.ts";
import { codeVersion, machineInfo, runBench, writeResults } from "./support/scaffold.ts";

const { values } = parseArgs({
  options: {
    rows: { type: "string", default: "20000" },
    commits: { type: "string", default: "200" },
    runs: { type: "string", default: "7" },
  },
});
const rows = Number(values.rows);
const commits = Number(values.commits);
const runs = Number(values.runs);
const log = (m: string) => process.stderr.write(`[renames ${new Date().toISOString().slice(11, 19)}] ${m}\n`);

/** A commit in the first half of the history (before `ren`'s rename), counted back from HEAD. */
const before = Math.floor((commits * 3) / 4);

/** The queries timed, for a table and its key column's name. */
const queries = (t: string, k: string, aCol: string): { label: string; sql: string }[] => [
  {
    label: "AS OF point lookup, after the rename",
    sql: `SELECT * FROM ${t} AS OF 'HEAD~${commits >> 2}' WHERE ${k} = 5`,
  },
  {
    label: "AS OF point lookup, before the rename",
    sql: `SELECT * FROM ${t} AS OF 'HEAD~${before}' WHERE ${k} = 7`,
  },
  {
    label: "AS OF whole table, after the rename",
    sql: `SELECT count(*), sum(b) FROM ${t} AS OF 'HEAD~${commits >> 2}'`,
  },
  {
    label: "AS OF whole table, before the rename",
    sql: `SELECT count(*), sum(b) FROM ${t} AS OF 'HEAD~${before}'`,
  },
  { label: "dolt_diff HEAD~1..HEAD", sql: `SELECT count(*) FROM dolt_diff('HEAD~1', 'HEAD', '${t}')` },
  {
    label: "dolt_diff across the rename",
    sql: `SELECT count(*), max(to_${aCol}) FROM dolt_diff('HEAD~${before}', 'HEAD', '${t}')`,
  },
  {
    label: "dolt_history_<t>, one key",
    sql: `SELECT count(*), max(${aCol}) FROM dolt_history_${t} WHERE ${k} = 5`,
  },
  { label: "dolt_blame_<t>, whole table", sql: `SELECT count(*), max("commit") FROM dolt_blame_${t}` },
];

async function main(): Promise<number> {
  const startedAt = new Date();
  useCompiledStrata();
  const strata = await startStandaloneStrata({ config: { log_level: "info" } });
  let db: pg.Client | undefined;
  try {
    const admin = await connect(strata.connectionConfig());
    await admin.query("CREATE DATABASE renames_bench");
    await admin.end();
    db = await connect(strata.connectionConfig("renames_bench"));
    const q = async (sql: string) => (await db!.query(sql)).rows;
    log(`loading ${thousands(rows)} rows into each table, then ${commits} commits`);
    for (const t of ["plain", "ren"]) {
      await q(`CREATE TABLE ${t} (id int PRIMARY KEY, a text, b int)`);
      await q(`INSERT INTO ${t} SELECT g, 'v' || g, g FROM generate_series(1, ${rows}) g`);
    }
    await q("SELECT dolt_commit('-Am', 'load')");
    for (let i = 0; i < commits; i++) {
      if (i === commits >> 1) {
        await q("ALTER TABLE ren RENAME COLUMN id TO rid");
        await q("ALTER TABLE ren RENAME COLUMN a TO aa");
        await q("SELECT dolt_commit('-Am', 'rename')");
      }
      await q(`UPDATE plain SET b = b + 1, a = a || '.' WHERE id % ${commits} = ${i}`);
      const [k, a] = i < commits >> 1 ? ["id", "a"] : ["rid", "aa"];
      await q(`UPDATE ren SET b = b + 1, ${a} = ${a} || '.' WHERE ${k} % ${commits} = ${i}`);
      await q(`SELECT dolt_commit('-Am', 'c${i}')`);
      if ((i + 1) % 50 === 0) log(`${i + 1}/${commits} commits`);
    }
    await q("VACUUM ANALYZE");
    const plain = queries("plain", "id", "a");
    const ren = queries("ren", "rid", "aa");
    const results = [];
    for (const [i, p] of plain.entries()) {
      const r = ren[i];
      // The same answers, or the timing compares different work.
      const [pa, ra] = [await q(p.sql), await q(r.sql)];
      const same = JSON.stringify(pa.map(Object.values)) === JSON.stringify(ra.map(Object.values));
      if (!same) throw new Error(`${p.label}: plain ${JSON.stringify(pa)}, renamed ${JSON.stringify(ra)}`);
      const times = { plain: [] as number[], ren: [] as number[] };
      for (let n = 0; n < runs; n++)
        for (const [side, sql] of [
          ["plain", p.sql],
          ["ren", r.sql],
        ] as const) {
          const t0 = performance.now();
          await q(sql);
          times[side].push(performance.now() - t0);
        }
      const [ps, rs] = [summarize(times.plain), summarize(times.ren)];
      results.push({ query: p.label, plainMs: ps, renamedMs: rs, ratio: rs.median / ps.median });
      log(`${p.label}: ${fixed(ps.median)} ms / ${fixed(rs.median)} ms`);
    }
    console.log(
      table(
        ["query", "never renamed ms", "renamed ms", "ratio"],
        results.map((r) => [
          r.query,
          fixed(r.plainMs.median),
          fixed(r.renamedMs.median),
          `${fixed(r.ratio, 1)}×`,
        ]),
      ),
    );
    writeResults("renames", startedAt, {
      machine: machineInfo(),
      code: codeVersion(),
      rows,
      commits,
      runs,
      results,
    });
    return 0;
  } finally {
    await db?.end();
    await strata.stop();
  }
}

runBench(main);
