// Failing a client's statement in order. The front door cannot slip an ErrorResponse of its own
// between the store's replies without tracking every reply; instead it sends the store, in place
// of the statement, one that raises the same error. The client then gets it exactly where the
// statement's own result would have been, with ReadyForQuery after it and the transaction state
// the store keeps (a failed block stays failed), through any protocol, pipelined or not.
//
// The statement is a DO block (PL/pgSQL is installed in every database by default) whose texts
// are E'' literals, which mean the same whatever standard_conforming_strings says.

import { isIdentChar, skipQuoted } from "./sql-text.ts";

export interface StatementError {
  message: string;
  hint?: string;
  detail?: string;
  /** SQLSTATE; anything that is not five digits or capitals (or is a success class) becomes XX000. */
  code?: string;
}

const SQLSTATE = /^[0-9A-Z]{5}$/;

/** A statement that fails, when run, with `error`'s message, detail, hint and SQLSTATE. */
export function errorStatement(error: StatementError): string {
  const code = error.code && SQLSTATE.test(error.code) && !error.code.startsWith("00") ? error.code : "XX000";
  const options = [`MESSAGE = ${literal(error.message)}`];
  if (error.detail) options.push(`DETAIL = ${literal(error.detail)}`);
  if (error.hint) options.push(`HINT = ${literal(error.hint)}`);
  options.push(`ERRCODE = '${code}'`);
  const body = `BEGIN RAISE EXCEPTION USING ${options.join(", ")}; END`;
  let tag = "$strata$";
  for (let i = 1; body.includes(tag); i++) tag = `$strata${i}$`;
  return `DO ${tag}${body}${tag}`;
}

/** An escape-string literal: backslashes and quotes doubled, NUL (which text cannot hold) dropped. */
function literal(text: string): string {
  return `E'${text.replaceAll("\0", "").replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}

/** Parameters a statement can have: Bind and Parse count them in 16 bits. */
const MAX_PARAMETERS = 0xffff;

/**
 * The highest $n parameter `sql` refers to, outside literals, quoted identifiers and comments.
 * A Parse that left parameter types to the server has as many parameters as this; its
 * replacement must take as many, or the client's Bind is refused before the error is raised.
 * At most 65535, as many as a Bind can carry: a larger $n is the store's error to report.
 */
export function highestParameter(sql: string): number {
  let highest = 0;
  let i = 0;
  while (i < sql.length) {
    const end = skipQuoted(sql, i);
    if (end > i) {
      i = end;
      continue;
    }
    const param = sql[i] === "$" && !isIdentChar(sql[i - 1]) ? /^\$(\d+)/.exec(sql.slice(i, i + 12)) : null;
    if (param) {
      highest = Math.max(highest, Number(param[1]));
      i += param[0].length;
    } else i++;
  }
  return Math.min(highest, MAX_PARAMETERS);
}
