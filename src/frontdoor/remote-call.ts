// Finding a call the front door runs itself: a statement that is exactly
// `SELECT dolt_push('origin', 'main')` (or dolt_pull, dolt_fetch, dolt_clone, dolt_branch,
// dolt_checkout, dolt_merge; `dolt.` qualified or not), with string literals for arguments. Read with the real parser (libpg-query), so a
// name inside a string or a comment is never taken for a call. Anything else — parameters,
// other expressions, more statements — is left to the store, whose functions of those names say
// the call needs string literals through the front door.
import { parseSync } from "libpg-query";
import type { BranchCall } from "../branches/service.ts";
import type { RemoteCall } from "../remotes/service.ts";
import { codeMatches } from "./sql-text.ts";

const REMOTE_CALLS = new Set<string>(["dolt_push", "dolt_pull", "dolt_fetch", "dolt_clone"]);
const BRANCH_CALLS = new Set<string>(["dolt_branch", "dolt_checkout", "dolt_merge"]);
const CLUSTER_CALLS = new Set<string>(["dolt_assume_cluster_role", "dolt_cluster_transition_to_standby"]);
const CHEAP =
  /dolt_(push|pull|fetch|clone|branch\b|checkout|merge|assume_cluster_role|cluster_transition_to_standby)/i;

export type ClusterCall = "dolt_assume_cluster_role" | "dolt_cluster_transition_to_standby";

/** `alias`: the result column's name, when the call was written `SELECT fn(...) AS alias`. */
export type FoundCall = (
  | { kind: "remote"; fn: RemoteCall; args: string[] }
  | { kind: "branch"; fn: BranchCall; args: string[] }
  | { kind: "cluster"; fn: ClusterCall; args: string[]; star: boolean }
) & { alias?: string };

// biome-ignore lint/suspicious/noExplicitAny: an untyped JSON tree, read field by field
type Node = any;

/** Cheap: whether the text could hold such a call (then findRemoteCall, with the parser loaded). */
export const mayCallRemote = (sql: string): boolean => codeMatches(sql, CHEAP);

export function findRemoteCall(sql: string): FoundCall | undefined {
  if (!CHEAP.test(sql)) return undefined;
  let tree: Node;
  try {
    tree = parseSync(sql);
  } catch {
    return undefined;
  }
  if (tree?.stmts?.length !== 1) return undefined;
  const select = tree.stmts[0]?.stmt?.SelectStmt;
  if (!select || select.whereClause || select.targetList?.length !== 1) return undefined;
  if (select.op !== "SETOP_NONE") return undefined;
  // SELECT fn(...), or (the cluster calls, which return rows) SELECT * FROM fn(...).
  let call: Node;
  let star = false;
  if (select.fromClause) {
    const isStar = select.targetList[0]?.ResTarget?.val?.ColumnRef?.fields?.[0]?.A_Star !== undefined;
    const from = select.fromClause.length === 1 ? select.fromClause[0]?.RangeFunction : undefined;
    if (!isStar || !from || from.functions?.length !== 1) return undefined;
    call = from.functions[0]?.List?.items?.[0]?.FuncCall;
    star = true;
  } else call = select.targetList[0]?.ResTarget?.val?.FuncCall;
  const alias: string | undefined = star ? undefined : (select.targetList[0]?.ResTarget?.name ?? undefined);
  if (!call) return undefined;
  const names: string[] = (call.funcname ?? []).map((n: Node) => n?.String?.sval);
  const fn = names[names.length - 1];
  const kind = REMOTE_CALLS.has(fn)
    ? "remote"
    : BRANCH_CALLS.has(fn)
      ? "branch"
      : CLUSTER_CALLS.has(fn)
        ? "cluster"
        : undefined;
  if (!kind || (names.length === 2 && names[0] !== "dolt") || names.length > 2) return undefined;
  if (star && kind !== "cluster") return undefined;
  const args: string[] = [];
  for (const arg of call.args ?? []) {
    const value = arg?.A_Const?.sval?.sval;
    const integer = arg?.A_Const?.ival;
    if (typeof value === "string") args.push(value);
    else if (arg?.A_Const?.sval && Object.keys(arg.A_Const.sval).length === 0) args.push("");
    // Epochs are numbers: SELECT dolt_assume_cluster_role('standby', 2) (ival {} is 0).
    else if (kind === "cluster" && integer !== undefined) args.push(String(integer.ival ?? 0));
    else return undefined;
  }
  // dolt_cluster_transition_to_standby answers with four columns: only a one-column answer is renamed.
  if (kind === "cluster")
    return {
      kind,
      fn: fn as ClusterCall,
      args,
      star,
      alias: fn === "dolt_assume_cluster_role" ? alias : undefined,
    };
  return kind === "remote"
    ? { kind, fn: fn as RemoteCall, args, alias }
    : { kind, fn: fn as BranchCall, args, alias };
}
