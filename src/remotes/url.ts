// Remote URLs: which kind of storage a remote is, and where. Pure parsing, no I/O — the storage
// for a parsed URL is opened by openRemoteStorage (storage.ts).
//
// Accepted forms, as Dolt writes them:
//   file:///absolute/path   a directory (percent-encoded like any file URL; a trailing slash is fine)
//   s3://bucket/prefix      a bucket and a key prefix (the prefix may be empty; percent-decoded too,
//                           so a database name substituted by remoteUrlTemplate reads back as given)
//   http(s)://host:port/... a remote served over HTTP
// Anything else is refused up front, naming the accepted forms, rather than failing later at the
// first push with an I/O error about a path nobody meant (`file://rel` would otherwise be a host).

import { fileURLToPath } from "node:url";

export type RemoteUrl =
  | { kind: "file"; path: string }
  | { kind: "s3"; bucket: string; prefix: string }
  | { kind: "http"; url: string };

export const REMOTE_URL_FORMS =
  "use file:///absolute/path (a directory), s3://bucket/prefix or http(s)://host:port/...";

export class RemoteUrlError extends Error {
  override name = "RemoteUrlError";
  constructor(
    message: string,
    readonly hint: string = REMOTE_URL_FORMS,
    readonly code = "22023",
  ) {
    super(message);
  }
}

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):/;
// S3's bucket naming rules (lowercase letters, digits, dots and hyphens; 3 to 63 characters).
const S3_BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export function parseRemoteUrl(url: string): RemoteUrl {
  const text = url.trim();
  const scheme = SCHEME.exec(text)?.[1]?.toLowerCase();
  if (scheme === "file") return { kind: "file", path: parseFileUrl(text) };
  if (scheme === "s3") return parseS3Url(text);
  if (scheme === "http" || scheme === "https") return { kind: "http", url: parseHttpUrl(text) };
  if (text === "") throw new RemoteUrlError("remote URL is empty");
  throw new RemoteUrlError(`remote URL "${url}" is not supported`);
}

function parseFileUrl(text: string): string {
  // file:/abs would parse too, but only the two-slash authority form is unambiguous to readers.
  if (!/^file:\/\/./i.test(text)) {
    throw new RemoteUrlError(`remote URL "${text}" is not a file URL of an absolute path`);
  }
  let parsed: URL;
  try {
    parsed = new URL(text);
  } catch {
    throw new RemoteUrlError(`remote URL "${text}" is not a valid URL`);
  }
  if (parsed.host !== "" && parsed.host !== "localhost") {
    throw new RemoteUrlError(
      `remote URL "${text}" names host "${parsed.host}" where the path should start (a relative path?)`,
      `a directory remote needs an absolute path and three slashes: file:///absolute/path; ${REMOTE_URL_FORMS}`,
    );
  }
  if (parsed.search !== "" || parsed.hash !== "") {
    throw new RemoteUrlError(
      `remote URL "${text}" has a query or fragment (write "?" as %3F and "#" as %23 in a path)`,
    );
  }
  let path: string;
  try {
    path = fileURLToPath(parsed);
  } catch (err) {
    // e.g. an encoded "/" (%2F), which a path cannot hold
    throw new RemoteUrlError(`remote URL "${text}" is not a usable path: ${(err as Error).message}`);
  }
  return path.length > 1 ? path.replace(/\/+$/, "") : path;
}

function parseS3Url(text: string): RemoteUrl {
  const rest = text.slice("s3://".length);
  if (!/^s3:\/\//i.test(text) || rest === "") {
    throw new RemoteUrlError(`remote URL "${text}" names no bucket`);
  }
  const slash = rest.indexOf("/");
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  if (!S3_BUCKET.test(bucket)) {
    throw new RemoteUrlError(
      `remote URL "${text}" has "${bucket}" as its bucket, which is not a valid S3 bucket name`,
      `S3 bucket names are 3 to 63 lowercase letters, digits, dots and hyphens; ${REMOTE_URL_FORMS}`,
    );
  }
  const rawPrefix = slash < 0 ? "" : rest.slice(slash + 1).replace(/^\/+|\/+$/g, "");
  let prefix: string;
  try {
    prefix = decodeURIComponent(rawPrefix);
  } catch {
    throw new RemoteUrlError(`remote URL "${text}" has a malformed percent-escape in its prefix`);
  }
  return { kind: "s3", bucket, prefix };
}

function parseHttpUrl(text: string): string {
  let parsed: URL;
  try {
    parsed = new URL(text);
  } catch {
    throw new RemoteUrlError(`remote URL "${text}" is not a valid URL`);
  }
  if (parsed.hostname === "") throw new RemoteUrlError(`remote URL "${text}" names no host`);
  return text;
}

const PLACEHOLDER = "{database}";

/**
 * The remote URL of one database: `template` with every `{database}` replaced by the database name,
 * percent-encoded (so names with spaces or "%" survive parseRemoteUrl's decoding unchanged).
 */
export function remoteUrlTemplate(template: string, database: string): string {
  if (!template.includes(PLACEHOLDER)) {
    throw new RemoteUrlError(
      `remote URL template "${template}" has no ${PLACEHOLDER}`,
      `write the remote URL with ${PLACEHOLDER} where the database name goes, e.g. file:///share/remotes/${PLACEHOLDER}`,
    );
  }
  // A name that would step out of its place in a path cannot become a remote of its own.
  if (database === "" || database === "." || database === ".." || /[/\\\u0000]/.test(database)) {
    throw new RemoteUrlError(
      `database name "${database}" cannot be used in a remote URL`,
      `use a database name without "/", "\\" or NUL that is not empty, "." or ".."`,
    );
  }
  return template.split(PLACEHOLDER).join(encodeURIComponent(database));
}
