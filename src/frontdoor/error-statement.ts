// Failing a client's statement in order. The front door cannot slip an ErrorResponse of its own
// between the store's replies without tracking every reply; instead it sends the store, in place
// of the statement, one that raises the same error. The client then gets it exactly where the
// statement's own result would have been, with ReadyForQuery after it and the transaction state
// the store keeps (a failed block stays failed), through any protocol, pipelined or not.
//
// The statement is a DO block (PL/pgSQL is installed in every database by default) whose texts
// are E'' literals, which mean the same whatever standard_conforming_strings says.

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
  const n = sql.length;
  while (i < n) {
    const c = sql[i];
    if (c === "'") {
      // E'...' (backslash escapes) or '...'; '' is a quote inside either.
      const escapes = i > 0 && (sql[i - 1] === "E" || sql[i - 1] === "e") && !isIdentChar(sql[i - 2]);
      i++;
      while (i < n) {
        if (escapes && sql[i] === "\\") i += 2;
        else if (sql[i] === "'") {
          if (sql[i + 1] === "'") i += 2;
          else break;
        } else i++;
      }
      i++;
    } else if (c === '"') {
      const close = sql.indexOf('"', i + 1);
      i = close < 0 ? n : close + 1;
    } else if (c === "-" && sql[i + 1] === "-") {
      const close = sql.indexOf("\n", i);
      i = close < 0 ? n : close + 1;
    } else if (c === "/" && sql[i + 1] === "*") {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] === "/" && sql[i + 1] === "*") {
          depth++;
          i += 2;
        } else if (sql[i] === "*" && sql[i + 1] === "/") {
          depth--;
          i += 2;
        } else i++;
      }
    } else if (c === "$") {
      const param = /^\$(\d+)/.exec(sql.slice(i, i + 12));
      if (param && !isIdentChar(sql[i - 1])) {
        highest = Math.max(highest, Number(param[1]));
        i += param[0].length;
        continue;
      }
      const tag = /^\$([A-Za-z_\u0080-\uffff][\w\u0080-\uffff]*)?\$/.exec(sql.slice(i, i + 130));
      if (tag && !isIdentChar(sql[i - 1])) {
        const close = sql.indexOf(tag[0], i + tag[0].length);
        i = close < 0 ? n : close + tag[0].length;
      } else i++;
    } else i++;
  }
  return Math.min(highest, MAX_PARAMETERS);
}

function isIdentChar(c: string | undefined): boolean {
  return c !== undefined && /[\w$\u0080-\uffff]/.test(c);
}
