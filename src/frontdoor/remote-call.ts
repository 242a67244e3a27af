// Finding a call the front door runs itself: a statement that is exactly
// `SELECT dolt_push('origin', 'main')` (or dolt_pull, dolt_fetch, dolt_clone, dolt_branch,
// dolt_checkout, dolt_merge; `dolt.` qualified or not), with string literals for arguments. Read with the real parser (libpg-query), so a
// name inside a string or a comment is never taken for a call. Anything else — parameters,
// other expressions, more statements — is left to the store, whose functions of those names say
// the call needs string literals through the front door.
import { parseSync } from "libpg-query";
import type { BranchCall } from "../branches/service.ts";
import type { RemoteCall } from "../remotes/service.ts";

const REMOTE_CALLS = new Set<string>(["dolt_push", "dolt_pull", "dolt_fetch", "dolt_clone"]);
const BRANCH_CALLS = new Set<string>(["dolt_branch", "dolt_checkout", "dolt_merge"]);
const CHEAP = /dolt_(push|pull|fetch|clone|branch\b|checkout|merge)/i;

export type FoundCall =
  | { kind: "remote"; fn: RemoteCall; args: string[] }
  | { kind: "branch"; fn: BranchCall; args: string[] };

// biome-ignore lint/suspicious/noExplicitAny: an untyped JSON tree, read field by field
type Node = any;

/** Cheap: whether the text could hold such a call (then findRemoteCall, with the parser loaded). */
export const mayCallRemote = (sql: string): boolean => CHEAP.test(sql);

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
  if (!select || select.fromClause || select.whereClause || select.targetList?.length !== 1) return undefined;
  if (select.op !== "SETOP_NONE") return undefined;
  const call = select.targetList[0]?.ResTarget?.val?.FuncCall;
  if (!call) return undefined;
  const names: string[] = (call.funcname ?? []).map((n: Node) => n?.String?.sval);
  const fn = names[names.length - 1];
  const kind = REMOTE_CALLS.has(fn) ? "remote" : BRANCH_CALLS.has(fn) ? "branch" : undefined;
  if (!kind || (names.length === 2 && names[0] !== "dolt") || names.length > 2) return undefined;
  const args: string[] = [];
  for (const arg of call.args ?? []) {
    const value = arg?.A_Const?.sval?.sval;
    if (typeof value !== "string") {
      if (arg?.A_Const?.sval && Object.keys(arg.A_Const.sval).length === 0) args.push("");
      else return undefined;
    } else args.push(value);
  }
  return kind === "remote" ? { kind, fn: fn as RemoteCall, args } : { kind, fn: fn as BranchCall, args };
}
