// Outbound TLS to cluster peers (config.yaml: cluster.remotesapi.tls_ca, server_name_urls,
// server_name_dns), with the meaning Dolt's docs give those keys:
//
// - tls_ca: a PEM file of the CA certificates trusted for connections to peers; unset, Node's
//   default roots. A private CA is the usual case, so the file is read and checked at start: a bad
//   path stops the server naming the key, instead of every handshake failing later.
// - server_name_urls / server_name_dns: when either is set, the leaf certificate must carry one of
//   the listed URI (e.g. spiffe://...) or DNS subject alternative names, and these checks REPLACE the
//   usual check that the certificate is for the host in the peer's URL. That lets peers be reached
//   by address (or through a proxy) while their certificates name a service identity. With neither
//   set, Node's hostname check applies.
//
// The chain itself (signature, expiry) is always verified: rejectUnauthorized is never false.

import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import type { TLSSocket } from "node:tls";
import { checkServerIdentity as defaultCheckServerIdentity, type PeerCertificate } from "node:tls";

export interface PeerTlsConfig {
  tls_ca?: string;
  server_name_urls: string[];
  server_name_dns: string[];
}

export interface OutboundTlsOptions {
  ca?: Buffer;
  rejectUnauthorized: true;
  checkServerIdentity: (host: string, cert: PeerCertificate) => Error | undefined;
}

const KEY = "cluster.remotesapi";

/** Options for https.request / tls.connect to a peer. */
export function outboundTlsOptions(config: PeerTlsConfig): OutboundTlsOptions {
  const ca = config.tls_ca === undefined ? undefined : readCaFile(config.tls_ca);
  const urls = config.server_name_urls;
  const dns = config.server_name_dns;
  if (urls.length === 0 && dns.length === 0) {
    return { ca, rejectUnauthorized: true, checkServerIdentity: defaultCheckServerIdentity };
  }
  return {
    ca,
    rejectUnauthorized: true,
    checkServerIdentity: (_host, cert) => checkNamedIdentity(cert, urls, dns),
  };
}

/** Raised by our checkServerIdentity; describeTlsError passes its message through. */
export class PeerIdentityError extends Error {
  readonly code = "ERR_CLUSTER_PEER_IDENTITY";
}

function checkNamedIdentity(cert: PeerCertificate, urls: string[], dns: string[]): Error | undefined {
  const names = subjectAltNames(cert.subjectaltname);
  if (urls.length > 0 && !names.uris.some((uri) => urls.includes(uri))) {
    return new PeerIdentityError(
      `the peer's certificate names URI:[${names.uris.join(", ")}]; none is in ${KEY}.server_name_urls [${urls.join(", ")}]: add the peer's URI name to server_name_urls, or give the peer a certificate with one of those URI names`,
    );
  }
  // DNS names are case-insensitive; URIs (e.g. SPIFFE IDs) are compared exactly.
  const wanted = dns.map((name) => name.toLowerCase());
  if (dns.length > 0 && !names.dns.some((name) => wanted.includes(name.toLowerCase()))) {
    return new PeerIdentityError(
      `the peer's certificate names DNS:[${names.dns.join(", ")}]; none is in ${KEY}.server_name_dns [${dns.join(", ")}]: add the peer's DNS name to server_name_dns, or give the peer a certificate with one of those DNS names`,
    );
  }
  return undefined;
}

/**
 * The DNS and URI names of a certificate's subjectaltname string, as Node formats it:
 * "DNS:a, URI:spiffe://x, IP Address:1.2.3.4", where a value holding a comma or quote is
 * JSON-quoted (so a crafted name cannot smuggle in a second entry).
 */
export function subjectAltNames(san: string | undefined): { dns: string[]; uris: string[] } {
  const dns: string[] = [];
  const uris: string[] = [];
  const entry = /([^:,]+):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/y;
  let match: RegExpExecArray | null;
  // biome-ignore lint/suspicious/noAssignInExpressions: the usual regex loop
  while (san && entry.lastIndex < san.length && (match = entry.exec(san))) {
    const value = match[2].startsWith('"') ? (JSON.parse(match[2]) as string) : match[2];
    if (match[1] === "DNS") dns.push(value);
    else if (match[1] === "URI") uris.push(value);
  }
  return { dns, uris };
}

function readCaFile(file: string): Buffer {
  const fix = `set ${KEY}.tls_ca to a PEM file holding the CA certificate(s) that issued the peers' ${KEY}.tls_cert, or leave it unset to trust Node's default roots`;
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new Error(`${KEY}.tls_ca: cannot read ${file} (${code}); ${fix}`);
  }
  const blocks = pem.toString("latin1").match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g);
  if (!blocks) throw new Error(`${KEY}.tls_ca: ${file} holds no PEM certificate; ${fix}`);
  blocks.forEach((block, i) => {
    try {
      new X509Certificate(block);
    } catch (err) {
      throw new Error(
        `${KEY}.tls_ca: certificate ${i + 1} in ${file} cannot be parsed (${(err as Error).message}); ${fix}`,
      );
    }
  });
  return pem;
}

/**
 * Remember the peer's certificate during the handshake, so that a chain error (for which Node
 * destroys the socket before anything can read the certificate) can still say e.g. when it
 * expired. Returns a getter; undefined if the handshake never got that far. Relies on the
 * socket's internal "secure" event, which comes just before Node's own verification; if a Node
 * version stops emitting it, the errors merely lose that detail.
 */
export function watchPeerCertificate(socket: TLSSocket): () => PeerCertificate | undefined {
  let cert: PeerCertificate | undefined;
  socket.prependOnceListener("secure", () => {
    const seen = socket.getPeerCertificate();
    if (seen && Object.keys(seen).length > 0) cert = seen;
  });
  return () => cert;
}

type ErrorWithDetail = Error & { code?: string; reason?: string; host?: string; cert?: PeerCertificate };

/**
 * One line saying why a connection to a peer failed and what to change, for Node's TLS
 * verification errors (and our identity errors); other errors come back as their message.
 * `cert` is the peer's certificate, when known (see watchPeerCertificate).
 */
export function describeTlsError(err: unknown, cert?: PeerCertificate): string {
  if (!(err instanceof Error)) return String(err);
  const e = err as ErrorWithDetail;
  const peerCert = e.cert ?? cert;
  const caFix = `set ${KEY}.tls_ca to a PEM file holding the CA certificate that issued the peer's ${KEY}.tls_cert`;
  const untrusted = `is not signed by a CA in ${KEY}.tls_ca (or, when that is unset, in Node's default roots)`;
  switch (e.code) {
    case "ERR_CLUSTER_PEER_IDENTITY":
      return e.message;
    case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
    case "UNABLE_TO_GET_ISSUER_CERT":
    case "UNABLE_TO_GET_ISSUER_CERT_LOCALLY":
    case "CERT_SIGNATURE_FAILURE":
      return `the peer's certificate${issuer(peerCert)} ${untrusted} (${e.code}): ${caFix}`;
    case "SELF_SIGNED_CERT_IN_CHAIN":
      return `the peer's certificate chain ends in a self-signed CA that is not in ${KEY}.tls_ca (${e.code}): ${caFix}`;
    case "DEPTH_ZERO_SELF_SIGNED_CERT":
      return `the peer's certificate is self-signed and not in ${KEY}.tls_ca (${e.code}): add that certificate to ${KEY}.tls_ca, or give the peer a certificate issued by a CA in it`;
    case "CERT_HAS_EXPIRED":
      return `the peer's certificate ${peerCert?.valid_to ? `expired on ${isoDate(peerCert.valid_to)}` : "has expired"} (${e.code}): renew the peer's ${KEY}.tls_cert (and check both machines' clocks)`;
    case "CERT_NOT_YET_VALID":
      return `the peer's certificate is not valid until ${peerCert?.valid_from ? isoDate(peerCert.valid_from) : "later"} (${e.code}): check both machines' clocks`;
    case "ERR_TLS_CERT_ALTNAME_INVALID": {
      const names = peerCert?.subjectaltname ? ` (it names ${peerCert.subjectaltname})` : "";
      return `the peer's certificate is not for ${e.host ?? "the host in its URL"}${names}: use a host the certificate names in the peer's URL, or set ${KEY}.server_name_dns / server_name_urls to a name it carries`;
    }
    case "ERR_SSL_WRONG_VERSION_NUMBER":
    case "EPROTO":
      return `no TLS handshake with the peer (${sslReason(e)}): if the peer serves plain HTTP (no ${KEY}.tls_key), use http:// in its URL`;
    case "ECONNREFUSED":
      return `connection refused (${message(e)}): check that the peer runs with ${KEY}.port set and that its URL's host and port are right`;
    case "ECONNRESET":
      return `the peer closed the connection (${message(e)}); if it serves plain HTTP, use http:// in its URL`;
    default: {
      const text = message(e);
      return e.code && !text.includes(e.code) ? `${text} (${e.code})` : text;
    }
  }
}

/**
 * An error's message on one line (OpenSSL's end in a newline); for the AggregateError of a
 * connection tried on several addresses, theirs.
 */
function message(err: Error): string {
  if (err.message === "" && err instanceof AggregateError) {
    return err.errors.map((inner) => (inner instanceof Error ? message(inner) : String(inner))).join("; ");
  }
  return err.message.replace(/\s*\n\s*/g, " ").trim();
}

/** OpenSSL's reason ("wrong version number") rather than its whole error string. */
function sslReason(err: ErrorWithDetail): string {
  return err.reason ?? /SSL routines:[^:]*:([^:]+):/.exec(err.message)?.[1] ?? message(err);
}

function issuer(cert: PeerCertificate | undefined): string {
  const cn = cert?.issuer?.CN;
  return cn ? `, issued by "${cn}",` : "";
}

function isoDate(openssl: string): string {
  const date = new Date(openssl);
  return Number.isNaN(date.getTime()) ? openssl : date.toISOString();
}
