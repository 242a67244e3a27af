// What the front door changes in a client's SQL before the store sees it, found with the real
// Postgres scanner and parser (libpg-query), never with regular expressions over text: string
// literals, quoted names and comments cannot fool it.
//
//   SELECT ... FROM t AS OF 'HEAD~3' [alias]   → FROM dolt_as_of_t('HEAD~3') AS t
//       with `WHERE <every key column> = <constant or $n>`, the keyed form dolt_as_of_t('HEAD~3',
//       5) (key values in key order): one index lookup instead of the whole table as of then
//   dolt_diff('A', 'B', 't')                    → dolt_diff_t('A', 'B') (t's own columns)
//   SHOW dolt_x                                 → SELECT dolt.setting('dolt_x') AS dolt_x
//   SET [LOCAL] dolt_x TO v, RESET dolt_x       → the same on strata.dolt_x, v checked
//   ALTER SYSTEM SET dolt_x [TO | =] v          → ALTER SYSTEM SET strata.dolt_x TO v (also the
//       reference's form without TO), ALTER SYSTEM RESET dolt_x
//   current_setting('dolt_x'), set_config('dolt_x', ...)  → dolt.setting / strata.dolt_x
//
// Everything else passes through untouched; a cheap test on the text keeps the scanner off the
// hot path of ordinary queries.
import { loadModule, parseSync, scanSync } from "libpg-query";
import {
  findVariable,
  normalizeValue,
  storeSettingName,
  unknownVariable,
  type VariableDefinition,
  VariableError,
} from "../config/variables.ts";

interface Token {
  start: number;
  end: number;
  text: string;
  tokenName: string;
  keywordName: string;
}

/** An as-of call written by rewriteExpressions: `call` is its text, fn(<one token>). */
interface AsOfCall {
  call: string;
  table: string;
  fn: string;
  schema?: string;
  alias: string;
}

interface Edit {
  start: number;
  end: number;
  text: string;
}

export interface RewriteCatalog {
  /** The key columns of `table`'s keyed as-of function (`table` in `schema`, or on the search path). */
  asOfKeys(schema: string | undefined, table: string): Promise<string[] | undefined>;
}

/** A store setting an ALTER SYSTEM sets (value) or resets (null). */
export interface AlteredSetting {
  name: string;
  value: string | null;
}

export interface Rewritten {
  sql: string;
  /** What ALTER SYSTEM statements in it change: the configuration must be reloaded after them. */
  altersSystem: AlteredSetting[];
}

const CANDIDATE = /dolt_|strata_|\bof\b|alter\s+system/i;

/** Whether `sql` could hold Strata syntax: a cheap test on the text before any scanning. */
export const mayRewrite = (sql: string): boolean => CANDIDATE.test(sql);

/** Names of Strata's system variables: Doltgres's dolt_*, and Strata's own strata_*. */
const isVariableName = (name: string | undefined): name is string =>
  !!name && (name.startsWith("dolt_") || name.startsWith("strata_"));

let ready: Promise<void> | undefined;
/** Load the parser (WebAssembly) once, before the first rewrite. */
export function loadParser(): Promise<void> {
  ready ??= loadModule();
  return ready;
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;
const quoteLiteral = (text: string) => `'${text.replace(/'/g, "''")}'`;
const upper = (t: Token | undefined) => (t ? t.text.toUpperCase() : "");
const isName = (t: Token | undefined) =>
  !!t &&
  (t.tokenName === "IDENT" || t.keywordName === "UNRESERVED_KEYWORD" || t.keywordName === "COL_NAME_KEYWORD");

/** An identifier token's name: quoted as written, unquoted folded to lower case. */
function identName(t: Token): string {
  return t.text.startsWith('"') ? t.text.slice(1, -1).replace(/""/g, '"') : t.text.toLowerCase();
}

/** A plain string literal's value ('...' with '' escapes); undefined for other forms. */
function stringValue(t: Token | undefined): string | undefined {
  if (t?.tokenName !== "SCONST" || !t.text.startsWith("'")) return undefined;
  return t.text.slice(1, -1).replace(/''/g, "'");
}

/** A SET value token's text: a literal's value, or a word / number as written. */
function settingValue(tokens: Token[]): string | undefined {
  if (tokens.length === 1) {
    const t = tokens[0];
    const literal = stringValue(t);
    if (literal !== undefined) return literal;
    if (t.tokenName === "ICONST" || t.tokenName === "FCONST" || isName(t) || t.keywordName !== "NO_KEYWORD")
      return t.text;
  }
  if (tokens.length === 2 && tokens[0].text === "-" && tokens[1].tokenName.endsWith("CONST"))
    return `-${tokens[1].text}`;
  return undefined;
}

function variableOf(t: Token | undefined): VariableDefinition | undefined {
  if (!t || !isName(t)) return undefined;
  const name = identName(t);
  if (!isVariableName(name)) return undefined;
  const variable = findVariable(name);
  if (!variable) throw unknownVariable(name);
  return variable;
}

function scan(sql: string): Token[] | undefined {
  try {
    return scanSync(sql).tokens as Token[];
  } catch {
    return undefined;
  }
}

/** Rewrite `sql`, or undefined when nothing in it is Strata's. Throws VariableError for bad settings. */
export async function rewriteSql(sql: string, catalog: RewriteCatalog): Promise<Rewritten | undefined> {
  if (!CANDIDATE.test(sql)) return undefined;
  await loadParser();
  let text = sql;
  let tokens = scan(text);
  // Doltgres's documentation has statements ending in a stray double quote; forgive exactly that.
  if (!tokens && /"\s*$/.test(text)) {
    const trimmed = text.replace(/"\s*$/, "");
    tokens = scan(trimmed);
    if (tokens) text = trimmed;
  }
  if (!tokens) return undefined;
  const edits: Edit[] = [];
  const altersSystem: AlteredSetting[] = [];
  const asOfCalls: AsOfCall[] = [];
  let statementStart = 0;
  for (let i = 0; i <= tokens.length; i++) {
    if (i < tokens.length && tokens[i].text !== ";") continue;
    const statement = tokens.slice(statementStart, i);
    statementStart = i + 1;
    if (statement.length === 0) continue;
    const whole = rewriteStatement(statement, altersSystem);
    if (whole !== undefined) {
      edits.push({ start: statement[0].start, end: statement.at(-1)!.end, text: whole });
      continue;
    }
    rewriteExpressions(statement, edits, asOfCalls);
  }
  if (edits.length === 0) return text === sql ? undefined : { sql: text, altersSystem };
  const rewritten = applyEdits(text, edits);
  // One parse: it checks the rewrite (a failure lets the store report the client's own syntax
  // error) and finds the key lookups; adding key arguments keeps the statement valid.
  let tree: unknown;
  try {
    tree = parseSync(rewritten);
  } catch {
    return undefined;
  }
  const sqlOut = asOfCalls.length > 0 ? await withKeyLookups(rewritten, tree, asOfCalls, catalog) : rewritten;
  return { sql: sqlOut, altersSystem };
}

function applyEdits(text: string, edits: Edit[]): string {
  let out = "";
  let at = 0;
  for (const edit of [...edits].sort((a, b) => a.start - b.start)) {
    out += text.slice(at, edit.start) + edit.text;
    at = edit.end;
  }
  return out + text.slice(at);
}

/** SHOW / SET / RESET / ALTER SYSTEM of a Strata variable: the statement's replacement. */
function rewriteStatement(t: Token[], altersSystem: AlteredSetting[]): string | undefined {
  const first = upper(t[0]);
  if (first === "SHOW" && t.length === 2) {
    const variable = variableOf(t[1]);
    if (variable)
      return `SELECT dolt.setting(${quoteLiteral(variable.name)}) AS ${quoteIdent(variable.name)}`;
    return undefined;
  }
  if (first === "RESET" && t.length === 2) {
    const variable = variableOf(t[1]);
    return variable && `RESET ${storeSettingName(variable)}`;
  }
  if (first === "SET") {
    let at = 1;
    const scope = upper(t[at]);
    if (scope === "SESSION" || scope === "LOCAL") at++;
    const variable = variableOf(t[at]);
    if (!variable) return undefined;
    const assign = upper(t[at + 1]);
    if (assign !== "TO" && assign !== "=")
      throw new VariableError(
        `syntax error in SET ${variable.name}`,
        `write SET ${variable.name} TO value`,
        "42601",
      );
    const value = settingSql(variable, t.slice(at + 2));
    return `SET ${scope === "LOCAL" ? "LOCAL " : ""}${storeSettingName(variable)} TO ${value ?? "DEFAULT"}`;
  }
  if (first === "ALTER" && upper(t[1]) === "SYSTEM") {
    const action = upper(t[2]);
    const variable = variableOf(t[3]);
    if (!variable) return undefined;
    const name = storeSettingName(variable);
    if (action === "RESET" && t.length === 4) {
      altersSystem.push({ name, value: null });
      return `ALTER SYSTEM RESET ${name}`;
    }
    if (action !== "SET")
      throw new VariableError(
        `syntax error in ALTER SYSTEM ${action} ${variable.name}`,
        `write ALTER SYSTEM SET ${variable.name} TO value, or ALTER SYSTEM RESET ${variable.name}`,
        "42601",
      );
    // Doltgres's reference writes `ALTER SYSTEM SET name 'value'`, without TO: both work here.
    const assign = upper(t[4]);
    const value = settingSql(variable, assign === "TO" || assign === "=" ? t.slice(5) : t.slice(4));
    if (value === undefined) {
      altersSystem.push({ name, value: null });
      return `ALTER SYSTEM RESET ${name}`;
    }
    altersSystem.push({ name, value: value.slice(1, -1).replace(/''/g, "'") });
    return `ALTER SYSTEM SET ${name} TO ${value}`;
  }
  return undefined;
}

/** A SET value as a checked, normalised literal; undefined for DEFAULT. */
function settingSql(variable: VariableDefinition, tokens: Token[]): string | undefined {
  if (variable.readOnly)
    throw new VariableError(
      `Variable '${variable.name}' is a read only variable`,
      variable.name.startsWith("dolt_cluster_")
        ? "a server's cluster role changes with SELECT dolt_assume_cluster_role('primary' | 'standby', epoch)"
        : `SHOW ${variable.name} reads it`,
      "55P02",
    );
  if (tokens.length === 1 && upper(tokens[0]) === "DEFAULT") return undefined;
  const value = settingValue(tokens);
  if (value === undefined)
    throw new VariableError(
      `invalid value for ${variable.name}: ${tokens.map((x) => x.text).join(" ") || "(none)"}`,
      `give one value, e.g. SET ${variable.name} TO ${variable.kind === "boolean" ? "1" : "'value'"}`,
    );
  return quoteLiteral(normalizeValue(variable, value));
}

/** AS OF, dolt_diff('A', 'B', 't'), current_setting / set_config of Strata variables. */
function rewriteExpressions(t: Token[], edits: Edit[], asOfCalls: AsOfCall[]) {
  for (let i = 0; i < t.length; i++) {
    const word = t[i].tokenName === "IDENT" ? t[i].text.toLowerCase() : "";
    if (word === "current_setting" && t[i + 1]?.text === "(") {
      const name = stringValue(t[i + 2]);
      const variable = isVariableName(name) ? findVariable(name) : undefined;
      if (!variable) continue;
      // current_setting(name [, missing_ok]): the closing parenthesis of the call.
      let close = i + 3;
      while (close < t.length && t[close].text !== ")") close++;
      if (close >= t.length) continue;
      edits.push({
        start: t[i].start,
        end: t[close].end,
        text: `dolt.setting(${quoteLiteral(variable.name)})`,
      });
      i = close;
      continue;
    }
    if (word === "set_config" && t[i + 1]?.text === "(") {
      const name = stringValue(t[i + 2]);
      const variable = isVariableName(name) ? findVariable(name) : undefined;
      if (variable)
        edits.push({
          start: t[i + 2].start,
          end: t[i + 2].end,
          text: quoteLiteral(storeSettingName(variable)),
        });
      continue;
    }
    if (word === "dolt_diff" && t[i + 1]?.text === "(" && t[i + 7]?.text === ")" && t[i - 1]?.text !== ".") {
      const [from, , to, , table] = t.slice(i + 2, i + 7);
      const name = stringValue(table);
      if (!name || from.tokenName !== "SCONST" || to.tokenName !== "SCONST") continue;
      const dot = name.lastIndexOf(".");
      const fn = `${dot >= 0 ? `${quoteIdent(name.slice(0, dot))}.` : ""}${quoteIdent(`dolt_diff_${name.slice(dot + 1)}`)}`;
      edits.push({ start: t[i].start, end: t[i + 7].end, text: `${fn}(${from.text}, ${to.text})` });
      i += 7;
      continue;
    }
    // <name>[.<name>] AS OF <'commit' | $n>
    if (upper(t[i]) === "AS" && upper(t[i + 1]) === "OF" && isName(t[i - 1])) {
      const value = t[i + 2];
      if (!value || (value.tokenName !== "SCONST" && value.tokenName !== "PARAM")) continue;
      let nameStart = i - 1;
      const table = identName(t[nameStart]);
      let schema: string | undefined;
      if (t[nameStart - 1]?.text === "." && isName(t[nameStart - 2])) {
        nameStart -= 2;
        schema = identName(t[nameStart]);
      }
      const fn = `dolt_as_of_${table}`;
      const next = t[i + 3];
      const aliased = upper(next) === "AS" || isName(next);
      const call = `${schema === undefined ? "" : `${quoteIdent(schema)}.`}${quoteIdent(fn)}(${value.text})`;
      edits.push({
        start: t[nameStart].start,
        end: value.end,
        text: aliased ? call : `${call} AS ${quoteIdent(table)}`,
      });
      const aliasToken = upper(next) === "AS" ? t[i + 4] : next;
      asOfCalls.push({
        call,
        table,
        fn,
        schema,
        alias: aliased && aliasToken ? identName(aliasToken) : table,
      });
      i += 2;
    }
  }
}

/**
 * A node of libpg-query's parse tree (JSON): read defensively, field by field, since only a few
 * shapes matter here and anything else means "leave the query as it is".
 */
// biome-ignore lint/suspicious/noExplicitAny: an untyped JSON tree, narrowed by the checks that read it
type ParseNode = Record<string, any>;

interface Conjunct {
  column: string;
  qualifier?: string;
  value: string;
}

/** `col = constant` / `col = $n` terms ANDed at the top of a WHERE clause. */
function equalities(where: unknown): Conjunct[] {
  const node = where as ParseNode | undefined;
  if (!node) return [];
  if (node.BoolExpr?.boolop === "AND_EXPR") return node.BoolExpr.args.flatMap(equalities);
  const expr = node.A_Expr;
  if (expr?.kind !== "AEXPR_OP" || expr.name?.[0]?.String?.sval !== "=") return [];
  const fields: string[] | undefined = expr.lexpr?.ColumnRef?.fields?.map((f: ParseNode) => f.String?.sval);
  if (!fields || fields.some((f) => f === undefined) || fields.length > 2) return [];
  const value = constantSql(expr.rexpr);
  if (value === undefined) return [];
  return [{ column: fields.at(-1)!, qualifier: fields.length === 2 ? fields[0] : undefined, value }];
}

function constantSql(node: ParseNode | undefined): string | undefined {
  if (node?.ParamRef) return `$${node.ParamRef.number}`;
  const c = node?.A_Const;
  if (!c || c.isnull) return undefined;
  if (c.ival) return String(c.ival.ival ?? 0);
  if (c.fval) return c.fval.fval;
  if (c.sval) return quoteLiteral(c.sval.sval);
  if (c.boolval) return c.boolval.boolval ? "true" : "false";
  return undefined;
}

/** Every SelectStmt in a parse tree. */
function* selects(node: unknown): Generator<ParseNode> {
  if (Array.isArray(node)) for (const item of node) yield* selects(item);
  else if (node && typeof node === "object") {
    const record = node as ParseNode;
    if (record.SelectStmt) yield record.SelectStmt;
    for (const value of Object.values(record)) yield* selects(value);
  }
}

/** Add the key arguments to as-of calls whose query names every key column by equality. */
async function withKeyLookups(
  sql: string,
  tree: unknown,
  calls: AsOfCall[],
  catalog: RewriteCatalog,
): Promise<string> {
  const edits: Edit[] = [];
  for (const select of selects(tree)) {
    const from = select.fromClause;
    if (!Array.isArray(from) || from.length !== 1) continue;
    const call = from[0].RangeFunction?.functions?.[0]?.List?.items?.[0]?.FuncCall;
    const fnName: string | undefined = call?.funcname?.at(-1)?.String?.sval;
    const target = calls.find((c) => c.fn === fnName && sql.startsWith(c.call, call?.location));
    if (!call || !target || call.args?.length !== 1) continue;
    const keys = await catalog.asOfKeys(target.schema, target.table);
    if (!keys || keys.length === 0) continue;
    const terms = equalities(select.whereClause).filter(
      (e) => e.qualifier === undefined || e.qualifier === target.alias,
    );
    const args = keys.map((k) => terms.find((e) => e.column === k));
    if (args.some((a) => a === undefined)) continue;
    const close = call.location + target.call.length - 1;
    edits.push({
      start: close,
      end: close,
      text: args.map((a) => `, ${a!.value}`).join(""),
    });
  }
  return edits.length ? applyEdits(sql, edits) : sql;
}
