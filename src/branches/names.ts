// Branch names and the store databases that hold branches. Pure, no I/O.
//
// A Strata database `db` is its main branch; every other branch `b` is a store database of its
// own named `db/b` (Doltgres's `db/branch` name, so `psql -d db/b` and `\c db/b` reach a branch
// directly). A branch therefore reads and writes at native speed — it is a database — and costs a
// copy when it is made (docs/branches.md, "Cost").

export const MAIN_BRANCH = "main";

/** Postgres's longest identifier (NAMEDATALEN - 1), in bytes: a branch's database name must fit. */
const MAX_DATABASE_NAME_BYTES = 63;

export class BranchError extends Error {
  override name = "BranchError";
  constructor(
    message: string,
    readonly code: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/** The database a name of Doltgres's form (`db` or `db/branch`) names, split in two. */
export function splitDatabaseName(name: string): { base: string; branch: string } {
  const slash = name.indexOf("/");
  if (slash < 0) return { base: name, branch: MAIN_BRANCH };
  return { base: name.slice(0, slash), branch: name.slice(slash + 1) };
}

/** The store database that holds `branch` of the Strata database `base`. */
export function branchDatabase(base: string, branch: string): string {
  return branch === MAIN_BRANCH ? base : `${base}/${branch}`;
}

/** Throws BranchError unless `branch` can name a branch of `base` (and fits a database name). */
export function checkBranchName(base: string, branch: string): void {
  const problem = branchNameProblem(branch);
  if (problem)
    throw new BranchError(
      `"${branch}" is not a valid branch name: ${problem}`,
      "42602",
      'branch names are letters, digits and "_", "-", ".", "/" (not at the start, not "..", "//" or a trailing "/")',
    );
  const database = branchDatabase(base, branch);
  if (Buffer.byteLength(database) > MAX_DATABASE_NAME_BYTES)
    throw new BranchError(
      `branch "${branch}" of database "${base}" would need a store database named "${database}", longer than Postgres's ${MAX_DATABASE_NAME_BYTES} bytes`,
      "42622",
      `use a branch name of at most ${MAX_DATABASE_NAME_BYTES - Buffer.byteLength(base) - 1} bytes`,
    );
}

function branchNameProblem(branch: string): string | null {
  if (branch === "") return "it is empty";
  if (/^[-./]/.test(branch)) return `it starts with "${branch[0]}"`;
  if (branch.endsWith("/") || branch.endsWith(".")) return `it ends with "${branch.at(-1)}"`;
  if (branch.includes("..") || branch.includes("//"))
    return `it contains "${branch.includes("..") ? ".." : "//"}"`;
  const bad = /[^A-Za-z0-9_./-]/.exec(branch);
  if (bad) return `it contains ${JSON.stringify(bad[0])}`;
  if (/^[0-9a-v]{32}$/.test(branch)) return "it looks like a commit hash";
  if (branch.toUpperCase() === "HEAD") return "HEAD names the current commit";
  return null;
}

/** Store databases of `base`'s branches among `databases`, as branch name → database. */
export function branchesOf(base: string, databases: Iterable<string>): Map<string, string> {
  const branches = new Map<string, string>();
  for (const database of databases) {
    const split = splitDatabaseName(database);
    if (split.base === base) branches.set(split.branch, database);
  }
  return branches;
}
