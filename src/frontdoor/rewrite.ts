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
//   [pg_catalog.]current_setting('dolt_x'), set_config('dolt_x', ...)  → dolt.setting / strata.dolt_x
//
// Comments are ignored in matching, and kept unless inside a statement replaced whole.
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
import { codeMatches } from "./sql-text.ts";

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
  /** Why `table` has no as-of function to read it with, or undefined when it has one. */
  asOfUnavailable?(schema: string | undefined, table: string): Promise<AsOfError | undefined>;
}

/** A table named AS OF that cannot be read so: dropped, a partition, or no history yet. */
export class AsOfError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly hint?: string,
  ) {
    super(message);
  }
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
/**
 * The same in the code alone (literals and comments out), where current_setting('dolt_x') shows
 * as current_setting: "as of" or "dolt_" in a large INSERT's values must not cost a scan.
 */
const CODE_CANDIDATE = /dolt_|strata_|\bas\s+of\b|alter\s+system|current_setting|set_config/i;

/** Whether `sql` could hold Strata syntax: a cheap test on the text before any scanning. */
export const mayRewrite = (sql: string): boolean => codeMatches(sql, CANDIDATE, CODE_CANDIDATE);

/** Names of Strata's system variables: Doltgres's dolt_*, and Strata's own strata_*. */
const isVariableName = (name: string | undefined): name is string =>
  !!name && (name.startsWith("dolt_") || name.startsWith("strata_"));

let ready: Promise<void> | undefined;
/** Load the parser (WebAssembly) once, before the first rewrite. */
export function loadParser(): Promise<void> {
  ready ??= loadModule();
  return ready;
}

export const DROP_DATABASE = /\bdrop\s+database\b/i;

/**
 * The databases `sql` drops (DROP DATABASE statements, found by the parser); [] for anything
 * else, and for text that does not parse (the store reports that). Callers test the text with
 * DROP_DATABASE first: this parses it.
 */
export async function droppedDatabases(sql: string): Promise<string[]> {
  await loadParser();
  let tree: ParseNode;
  try {
    tree = parseSync(sql);
  } catch {
    return [];
  }
  const names: string[] = [];
  for (const s of tree.stmts ?? []) {
    const name = s?.stmt?.DropdbStmt?.dbname;
    if (typeof name === "string") names.push(name);
  }
  return names;
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

/**
 * A string literal's value: '...', E'...' (backslash escapes), U&'...' (Unicode escapes, here with
 * the default escape character; settingValue reads a UESCAPE clause) or $tag$...$tag$, as Postgres
 * reads them with standard_conforming_strings on; undefined for other tokens and for escapes that
 * do not make valid UTF-8.
 */
function stringValue(t: Token | undefined): string | undefined {
  if (t && /^[Uu]&'/.test(t.text)) return unicodeString(t.text.slice(3, -1), "\\");
  if (t?.tokenName !== "SCONST") return undefined;
  const text = t.text;
  if (text.startsWith("'")) return text.slice(1, -1).replace(/''/g, "'");
  if (text.startsWith("$")) {
    const tag = text.indexOf("$", 1) + 1;
    return text.slice(tag, text.length - tag);
  }
  if (text.startsWith("E'") || text.startsWith("e'")) return unescapeString(text.slice(2, -1));
  return undefined;
}

const SIMPLE_ESCAPES: Record<string, number> = { b: 8, f: 12, n: 10, r: 13, t: 9 };
const ESCAPE = /\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|([\s\S]))|''/gu;

/**
 * The body of an E'' literal: octal and hex escapes are bytes, \u and \U code points (a surrogate
 * pair written as two \u escapes is refused, where Postgres would join it).
 */
function unescapeString(body: string): string | undefined {
  const bytes: number[] = [];
  const text = (part: string) => bytes.push(...Buffer.from(part, "utf8"));
  let last = 0;
  for (const m of body.matchAll(ESCAPE)) {
    text(body.slice(last, m.index));
    last = m.index + m[0].length;
    const [whole, octal, hex, u4, u8, other] = m;
    if (whole === "''") bytes.push(0x27);
    else if (octal !== undefined) bytes.push(Number.parseInt(octal, 8) & 0xff);
    else if (hex !== undefined) bytes.push(Number.parseInt(hex, 16));
    else if (u4 !== undefined || u8 !== undefined) {
      const code = Number.parseInt(u4 ?? u8, 16);
      if (code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return undefined;
      text(String.fromCodePoint(code));
    } else if (other in SIMPLE_ESCAPES) bytes.push(SIMPLE_ESCAPES[other]);
    else text(other);
  }
  text(body.slice(last));
  if (bytes.includes(0)) return undefined;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(bytes));
  } catch {
    return undefined;
  }
}

const UNICODE_ESCAPE = /^(?:([0-9A-Fa-f]{4})|\+([0-9A-Fa-f]{6}))/;

/**
 * The body of a U&'' literal with escape character `escapeChar` (e): `eXXXX` and `e+XXXXXX` are
 * code points (a surrogate pair written as two escapes is joined), `ee` is the escape character
 * itself; anything else after it is invalid, as in Postgres.
 */
function unicodeString(body: string, escapeChar: string): string | undefined {
  const text = body.replace(/''/g, "'");
  let out = "";
  let high: number | undefined;
  for (let i = 0; i < text.length; ) {
    if (text[i] !== escapeChar) {
      if (high !== undefined) return undefined;
      out += text[i++];
      continue;
    }
    if (text[i + 1] === escapeChar) {
      if (high !== undefined) return undefined;
      out += escapeChar;
      i += 2;
      continue;
    }
    const m = UNICODE_ESCAPE.exec(text.slice(i + 1, i + 9));
    if (!m) return undefined;
    i += 1 + m[0].length;
    const code = Number.parseInt(m[1] ?? m[2], 16);
    if (high !== undefined) {
      if (code < 0xdc00 || code > 0xdfff) return undefined;
      out += String.fromCodePoint(0x10000 + ((high - 0xd800) << 10) + (code - 0xdc00));
      high = undefined;
    } else if (code >= 0xd800 && code <= 0xdbff) high = code;
    else if (code === 0 || code > 0x10ffff || (code >= 0xdc00 && code <= 0xdfff)) return undefined;
    else out += String.fromCodePoint(code);
  }
  return high === undefined ? out : undefined;
}

/** A UESCAPE clause's character, if valid: one character, not a hex digit, +, quote or space. */
function uescapeCharacter(t: Token | undefined): string | undefined {
  const value = t?.tokenName === "SCONST" && t.text.startsWith("'") ? stringValue(t) : undefined;
  return value !== undefined && value.length === 1 && !/[0-9A-Fa-f+'"\s]/.test(value) ? value : undefined;
}

/** A SET value token's text: a literal's value, or a word / number as written. */
function settingValue(tokens: Token[]): string | undefined {
  if (tokens.length === 3 && /^[Uu]&'/.test(tokens[0].text) && upper(tokens[1]) === "UESCAPE") {
    const escapeChar = uescapeCharacter(tokens[2]);
    return escapeChar === undefined ? undefined : unicodeString(tokens[0].text.slice(3, -1), escapeChar);
  }
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

/**
 * libpg-query's offsets (tokens' start and end, parse-tree locations) count the bytes of the UTF-8
 * its C side is given, JS strings count UTF-16 code units: the string index of each byte offset,
 * or undefined when `text` is ASCII and the two agree.
 */
function byteIndexes(text: string): ((offset: number) => number) | undefined {
  if (!/[^\x00-\x7f]/.test(text)) return undefined;
  // Encoded as libpg-query's stringToUTF8 does: a surrogate pair in 4 bytes, a lone surrogate in
  // 3, as Buffer.byteLength counts them too.
  const index = new Uint32Array(Buffer.byteLength(text) + 1);
  let byte = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.codePointAt(i)!;
    const size = code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
    for (const end = byte + size; byte < end; byte++) index[byte] = i;
    if (size === 4) i++;
  }
  index[byte] = text.length;
  return (offset) => index[offset] ?? text.length;
}

const isComment = (t: Token) => t.tokenName === "C_COMMENT" || t.tokenName === "SQL_COMMENT";

/** `sql`'s tokens, comments left out (Strata syntax is matched around them), offsets as string indexes. */
function scan(sql: string): Token[] | undefined {
  let tokens: Token[];
  try {
    tokens = (scanSync(sql).tokens as Token[]).filter((t) => !isComment(t));
  } catch {
    return undefined;
  }
  const index = byteIndexes(sql);
  if (index)
    for (const t of tokens) {
      t.start = index(t.start);
      t.end = index(t.end);
    }
  return tokens;
}

/**
 * Rewrite `sql`, or undefined when nothing in it is Strata's. Throws VariableError for bad
 * settings, AsOfError for a table that cannot be read AS OF.
 */
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
  if (asOfCalls.length === 0) return { sql: rewritten, altersSystem };
  // Said plainly, rather than as the store's "function dolt_as_of_t(unknown) does not exist".
  for (const call of asOfCalls) {
    const unavailable = await catalog.asOfUnavailable?.(call.schema, call.table);
    if (unavailable) throw unavailable;
  }
  try {
    return { sql: await withKeyLookups(rewritten, tree, asOfCalls, catalog), altersSystem };
  } catch {
    // The keyed form only saves time: whatever stops it, the plain rewrite answers the same.
    return { sql: rewritten, altersSystem };
  }
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

/**
 * Where a call of Postgres's function `t[i]` starts: at its pg_catalog. qualifier if it has one;
 * undefined when another schema qualifies it (then it is not Postgres's).
 */
function builtinCallStart(t: Token[], i: number): number | undefined {
  if (t[i - 1]?.text !== ".") return t[i].start;
  const schema = t[i - 2];
  if (!isName(schema) || identName(schema) !== "pg_catalog" || t[i - 3]?.text === ".") return undefined;
  return schema.start;
}

/** The index of the `)` closing the parenthesis at t[open], or undefined when it is not closed. */
function closingParen(t: Token[], open: number): number | undefined {
  let depth = 0;
  for (let i = open; i < t.length; i++) {
    if (t[i].text === "(") depth++;
    else if (t[i].text === ")" && --depth === 0) return i;
  }
  return undefined;
}

/** dolt_diff('from', 'to', 'table') at t[i], exactly: its three literals, or undefined. */
function diffArguments(t: Token[], i: number): [Token, Token, string] | undefined {
  const at = (k: number, text: string) => t[i + k]?.text === text;
  if (!(at(1, "(") && at(3, ",") && at(5, ",") && at(7, ")"))) return undefined;
  const [from, to, table] = [t[i + 2], t[i + 4], stringValue(t[i + 6])];
  if (!table || from.tokenName !== "SCONST" || to.tokenName !== "SCONST") return undefined;
  return [from, to, table];
}

/** AS OF, dolt_diff('A', 'B', 't'), current_setting / set_config of Strata variables. */
function rewriteExpressions(t: Token[], edits: Edit[], asOfCalls: AsOfCall[]) {
  // Set once a current_setting( is found unclosed: no call spans a `;`, so the statement is not
  // valid SQL and its rewrite will not parse anyway; looking again from each later call would
  // take quadratic time.
  let unclosed = false;
  // Whether each open parenthesis level is in a FROM list (a parenthesis inherits its outer
  // level's clause): `x AS OF 'HEAD'` is a table as of a commit only there; in a select list it is
  // a column aliased "of" and then a syntax error, which Postgres should report, not a call of a
  // function that does not exist.
  const inFrom: boolean[] = [false];
  for (let i = 0; i < t.length; i++) {
    trackClause(t[i], inFrom);
    const word = t[i].tokenName === "IDENT" ? t[i].text.toLowerCase() : "";
    if (word === "current_setting" && t[i + 1]?.text === "(" && !unclosed) {
      const name = stringValue(t[i + 2]);
      const variable = isVariableName(name) ? findVariable(name) : undefined;
      if (!variable) continue;
      const start = builtinCallStart(t, i);
      if (start === undefined) continue;
      // current_setting(name [, missing_ok]): the whole call, missing_ok dropped.
      const close = closingParen(t, i + 1);
      if (close === undefined) {
        unclosed = true;
        continue;
      }
      edits.push({ start, end: t[close].end, text: `dolt.setting(${quoteLiteral(variable.name)})` });
      i = close;
      continue;
    }
    if (word === "set_config" && t[i + 1]?.text === "(") {
      const name = stringValue(t[i + 2]);
      const variable = isVariableName(name) ? findVariable(name) : undefined;
      if (variable && builtinCallStart(t, i) !== undefined)
        edits.push({
          start: t[i + 2].start,
          end: t[i + 2].end,
          text: quoteLiteral(storeSettingName(variable)),
        });
      continue;
    }
    const diff = word === "dolt_diff" && t[i - 1]?.text !== "." ? diffArguments(t, i) : undefined;
    if (diff) {
      const [from, to, name] = diff;
      const dot = name.lastIndexOf(".");
      const fn = `${dot >= 0 ? `${quoteIdent(name.slice(0, dot))}.` : ""}${quoteIdent(`dolt_diff_${name.slice(dot + 1)}`)}`;
      edits.push({ start: t[i].start, end: t[i + 7].end, text: `${fn}(${from.text}, ${to.text})` });
      i += 7;
      continue;
    }
    // <name>[.<name>] AS OF <'commit' | $n>
    if (upper(t[i]) === "AS" && upper(t[i + 1]) === "OF" && isName(t[i - 1]) && inFrom[inFrom.length - 1]) {
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

/** Reserved words that start a clause: whether its items are tables (FROM, JOIN, USING) or not. */
const CLAUSE_IS_FROM = new Map<string, boolean>([
  ["FROM", true],
  ["JOIN", true],
  ["USING", true],
  ["SELECT", false],
  ["WHERE", false],
  ["ON", false],
  ["GROUP", false],
  ["HAVING", false],
  ["WINDOW", false],
  ["ORDER", false],
  ["LIMIT", false],
  ["OFFSET", false],
  ["FETCH", false],
  ["FOR", false],
  ["RETURNING", false],
  ["INTO", false],
  ["UNION", false],
  ["INTERSECT", false],
  ["EXCEPT", false],
]);

/** Keeps `inFrom` (one entry per open parenthesis) up to date with token `t`. */
function trackClause(t: Token, inFrom: boolean[]) {
  if (t.text === "(") inFrom.push(inFrom[inFrom.length - 1]);
  else if (t.text === ")") {
    if (inFrom.length > 1) inFrom.pop();
  } else if (t.text === ";") inFrom.splice(0, inFrom.length, false);
  else if (t.keywordName === "RESERVED_KEYWORD" || t.keywordName === "TYPE_FUNC_NAME_KEYWORD") {
    const from = CLAUSE_IS_FROM.get(t.text.toUpperCase());
    if (from !== undefined) inFrom[inFrom.length - 1] = from;
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

/** `col = constant` / `col = $n` terms ANDed at the top of a WHERE clause, in the order written. */
function equalities(where: unknown): Conjunct[] {
  const found: Conjunct[] = [];
  // A stack, not recursion: a WHERE clause of thousands of nested ANDs must not exhaust the stack.
  const pending = [where as ParseNode | undefined];
  while (pending.length > 0) {
    const node = pending.pop();
    if (node?.BoolExpr?.boolop === "AND_EXPR") {
      const args: ParseNode[] = node.BoolExpr.args;
      for (let k = args.length - 1; k >= 0; k--) pending.push(args[k]);
    } else {
      const term = equality(node);
      if (term) found.push(term);
    }
  }
  return found;
}

function equality(node: ParseNode | undefined): Conjunct | undefined {
  const expr = node?.A_Expr;
  if (expr?.kind !== "AEXPR_OP" || expr.name?.[0]?.String?.sval !== "=") return undefined;
  const fields: string[] | undefined = expr.lexpr?.ColumnRef?.fields?.map((f: ParseNode) => f.String?.sval);
  if (!fields || fields.some((f) => typeof f !== "string") || fields.length > 2) return undefined;
  const value = constantSql(expr.rexpr);
  if (value === undefined) return undefined;
  return { column: fields.at(-1)!, qualifier: fields.length === 2 ? fields[0] : undefined, value };
}

/** A constant's SQL. libpg-query's JSON leaves out fields at their zero value (0, '', false). */
function constantSql(node: ParseNode | undefined): string | undefined {
  if (node?.ParamRef) {
    // $0 is no parameter: left to the store to refuse, not made a key argument.
    const n = node.ParamRef.number ?? 0;
    return Number.isInteger(n) && n >= 1 ? `$${n}` : undefined;
  }
  const c = node?.A_Const;
  if (!c || c.isnull) return undefined;
  if (c.ival) return String(c.ival.ival ?? 0);
  if (c.fval) return typeof c.fval.fval === "string" ? c.fval.fval : undefined;
  if (c.sval) return quoteLiteral(c.sval.sval ?? "");
  if (c.boolval) return c.boolval.boolval ? "true" : "false";
  return undefined;
}

/** Every SelectStmt in a parse tree. */
function selects(tree: unknown): ParseNode[] {
  const found: ParseNode[] = [];
  // A stack, not recursion: subqueries nested a thousand deep must not exhaust the stack (nor
  // spreading a list of a million items into push()).
  const pending = [tree];
  while (pending.length > 0) {
    const node = pending.pop();
    if (!node || typeof node !== "object") continue;
    const record = node as ParseNode;
    if (record.SelectStmt) found.push(record.SelectStmt);
    // The branches of UNION / INTERSECT / EXCEPT are SelectStmts without the node's wrapper.
    if (record.op && record.op !== "SETOP_NONE")
      for (const branch of [record.larg, record.rarg]) if (branch) found.push(branch);
    for (const value of Array.isArray(node) ? node : Object.values(record)) pending.push(value);
  }
  return found;
}

/** The one as-of call a SELECT reads from, with nothing that renames its columns; else undefined. */
function asOfFunction(select: ParseNode): ParseNode | undefined {
  const from = select.fromClause;
  if (!Array.isArray(from) || from.length !== 1) return undefined;
  const range = from[0].RangeFunction;
  const [call, columns] = range?.functions?.[0]?.List?.items ?? [];
  // AS x(k, id) renames the columns by position: WHERE id = 5 need not be on the key any more.
  if (range?.alias?.colnames?.length || range?.coldeflist?.length || columns?.List?.items?.length)
    return undefined;
  return call?.FuncCall;
}

/** Add the key arguments to as-of calls whose query names every key column by equality. */
async function withKeyLookups(
  sql: string,
  tree: unknown,
  calls: AsOfCall[],
  catalog: RewriteCatalog,
): Promise<string> {
  const index = byteIndexes(sql) ?? ((offset: number) => offset);
  const edits: Edit[] = [];
  for (const select of selects(tree)) {
    const call = asOfFunction(select);
    if (call?.args?.length !== 1) continue;
    const fnName: string | undefined = call.funcname?.at(-1)?.String?.sval;
    const at = index(call.location ?? 0);
    const target = calls.find((c) => c.fn === fnName && sql.startsWith(c.call, at));
    if (!target) continue;
    const keys = await catalog.asOfKeys(target.schema, target.table);
    if (!keys || keys.length === 0) continue;
    const terms = equalities(select.whereClause).filter(
      (e) => e.qualifier === undefined || e.qualifier === target.alias,
    );
    const args = keys.map((k) => terms.find((e) => e.column === k));
    if (args.some((a) => a === undefined)) continue;
    const close = at + target.call.length - 1;
    edits.push({
      start: close,
      end: close,
      text: args.map((a) => `, ${a!.value}`).join(""),
    });
  }
  return edits.length ? applyEdits(sql, edits) : sql;
}
