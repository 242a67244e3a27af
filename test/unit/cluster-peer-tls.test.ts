// Outbound TLS to cluster peers (src/cluster/peer-tls.ts): cluster.remotesapi.tls_ca,
// server_name_dns and server_name_urls, exercised by fetching a peer's JWKS over HTTPS from local
// servers with certificates from test/support/cluster-tls.ts, and the error texts they give.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { checkServerIdentity, connect, type PeerCertificate } from "node:tls";
import pino from "pino";
import { NodeKey, PeerKeys } from "../../src/cluster/auth.ts";
import {
  describeTlsError,
  outboundTlsOptions,
  type PeerTlsConfig,
  subjectAltNames,
} from "../../src/cluster/peer-tls.ts";
import { type ClusterTls, clusterTls, type TestLeaf } from "../support/cluster-tls.ts";
import { tempDir } from "../support/postgres.ts";

const log = pino({ level: "silent" });

let certs: ClusterTls;
let peerKey: NodeKey;
let me: NodeKey;
const servers: Server[] = [];

before(async () => {
  certs = clusterTls();
  peerKey = await NodeKey.generate();
  me = await NodeKey.generate();
});

after(async () => {
  await Promise.all(
    servers.map((server) => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    }),
  );
});

/** A peer's control plane over HTTPS with `leaf`'s certificate; returns its JWKS URL (by address). */
async function httpsPeer(leaf: TestLeaf): Promise<string> {
  const server = createServer(leaf.pem, (_req, res) => {
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(peerKey.jwks()));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  servers.push(server);
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
}

const urls = new Map<TestLeaf, Promise<string>>();
function urlOf(leaf: TestLeaf): Promise<string> {
  if (!urls.has(leaf)) urls.set(leaf, httpsPeer(leaf));
  return urls.get(leaf)!;
}

function config(overrides: Partial<PeerTlsConfig> = {}): PeerTlsConfig {
  return { tls_ca: certs.ca.cert, server_name_urls: [], server_name_dns: [], ...overrides };
}

/** Fetch the peer's JWKS under `tlsConfig`: undefined when its key comes back, else fetchError. */
async function fetchFails(leaf: TestLeaf, tlsConfig: PeerTlsConfig): Promise<string | undefined> {
  const keys = new PeerKeys({
    peers: [{ name: "standby", jwksUrl: await urlOf(leaf) }],
    ownKid: me.kid,
    tls: outboundTlsOptions(tlsConfig),
    log,
  });
  try {
    assert.equal(await keys.peerKid("standby"), peerKey.kid);
    assert.equal(keys.fetchError("standby"), undefined);
    return undefined;
  } catch (err) {
    const reason = keys.fetchError("standby");
    assert.ok(reason, `no fetchError, but: ${err}`);
    assert.ok((err as Error).message.endsWith(reason), "peerKid's error carries the reason");
    return reason;
  }
}

// --- tls_ca ---------------------------------------------------------------------------------

test("tls_ca: read once; a missing, unreadable or non-PEM file names the key and the fix", () => {
  const options = outboundTlsOptions(config());
  assert.ok(options.ca?.toString().includes("BEGIN CERTIFICATE"));
  assert.equal(options.rejectUnauthorized, true);
  assert.equal(outboundTlsOptions(config({ tls_ca: undefined })).ca, undefined);

  const dir = tempDir("strata-cluster-tls-");
  assert.throws(() => outboundTlsOptions(config({ tls_ca: join(dir, "nope.pem") })), {
    message: new RegExp(
      `^cluster\\.remotesapi\\.tls_ca: cannot read ${dir}/nope\\.pem \\(ENOENT\\); set cluster\\.remotesapi\\.tls_ca to a PEM file holding the CA certificate\\(s\\)`,
    ),
  });
  assert.throws(() => outboundTlsOptions(config({ tls_ca: dir })), /tls_ca: cannot read .* \(EISDIR\)/);
  const notPem = join(dir, "not.pem");
  writeFileSync(notPem, "hello\n");
  assert.throws(
    () => outboundTlsOptions(config({ tls_ca: notPem })),
    /tls_ca: .*not\.pem holds no PEM certificate; set/,
  );
  assert.throws(() => outboundTlsOptions(config({ tls_ca: certs.ca.key })), /holds no PEM certificate/);
  const broken = join(dir, "broken.pem");
  writeFileSync(broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  assert.throws(
    () => outboundTlsOptions(config({ tls_ca: broken })),
    /tls_ca: certificate 1 in .*broken\.pem cannot be parsed/,
  );
});

test("JWKS over HTTPS from a peer whose certificate comes from the CA in tls_ca", async () => {
  assert.equal(await fetchFails(certs.peerA, config()), undefined);
});

test("a certificate from another CA is refused, saying which CA issued it and what to set", async () => {
  const reason = await fetchFails(certs.peerA, config({ tls_ca: certs.otherCa.cert }));
  assert.equal(
    reason,
    `the peer's certificate, issued by "Strata Test CA", is not signed by a CA in cluster.remotesapi.tls_ca (or, when that is unset, in Node's default roots) (UNABLE_TO_VERIFY_LEAF_SIGNATURE): set cluster.remotesapi.tls_ca to a PEM file holding the CA certificate that issued the peer's cluster.remotesapi.tls_cert`,
  );
  // Without tls_ca, Node's default roots do not know our CA either.
  assert.match(
    (await fetchFails(certs.peerA, config({ tls_ca: undefined })))!,
    /not signed by a CA in cluster\.remotesapi\.tls_ca/,
  );
});

test("an expired certificate is refused, saying when it expired", async () => {
  assert.equal(
    await fetchFails(certs.expired, config()),
    "the peer's certificate expired on 2020-01-02T00:00:00.000Z (CERT_HAS_EXPIRED): renew the peer's cluster.remotesapi.tls_cert (and check both machines' clocks)",
  );
});

test("without server_name_*, the certificate must be for the host in the URL", async () => {
  const reason = await fetchFails(certs.peerB, config());
  assert.match(
    reason!,
    /^the peer's certificate is not for 127\.0\.0\.1 \(it names DNS:peer-b\.strata\.test, URI:spiffe:\/\/strata\.test\/peer-b\): use a host the certificate names/,
  );
  assert.equal(outboundTlsOptions(config()).checkServerIdentity, checkServerIdentity);
});

test("server_name_dns replaces the hostname check: a listed DNS name is accepted, none refused", async () => {
  // peerB has no IP name: only server_name_dns can accept it when reached by address.
  assert.equal(await fetchFails(certs.peerB, config({ server_name_dns: ["peer-b.strata.test"] })), undefined);
  assert.equal(
    await fetchFails(certs.peerB, config({ server_name_dns: ["other", "PEER-B.strata.test"] })),
    undefined,
  );
  assert.equal(
    await fetchFails(certs.peerB, config({ server_name_dns: ["peer-a.strata.test", "x"] })),
    "the peer's certificate names DNS:[peer-b.strata.test]; none is in cluster.remotesapi.server_name_dns [peer-a.strata.test, x]: add the peer's DNS name to server_name_dns, or give the peer a certificate with one of those DNS names",
  );
  // The chain is still verified.
  assert.match(
    (await fetchFails(
      certs.peerB,
      config({ tls_ca: certs.otherCa.cert, server_name_dns: ["peer-b.strata.test"] }),
    ))!,
    /not signed by a CA/,
  );
});

test("server_name_urls: a listed URI name is accepted, none refused; with both lists, both must match", async () => {
  const uri = "spiffe://strata.test/peer-b";
  assert.equal(await fetchFails(certs.peerB, config({ server_name_urls: [uri] })), undefined);
  assert.equal(
    await fetchFails(certs.peerB, config({ server_name_urls: ["spiffe://strata.test/peer-a"] })),
    "the peer's certificate names URI:[spiffe://strata.test/peer-b]; none is in cluster.remotesapi.server_name_urls [spiffe://strata.test/peer-a]: add the peer's URI name to server_name_urls, or give the peer a certificate with one of those URI names",
  );
  // URIs are compared exactly.
  assert.match(
    (await fetchFails(certs.peerB, config({ server_name_urls: [uri.toUpperCase()] })))!,
    /none is in/,
  );
  assert.equal(
    await fetchFails(
      certs.peerB,
      config({ server_name_urls: [uri], server_name_dns: ["peer-b.strata.test"] }),
    ),
    undefined,
  );
  assert.match(
    (await fetchFails(
      certs.peerB,
      config({ server_name_urls: [uri], server_name_dns: ["peer-a.strata.test"] }),
    ))!,
    /server_name_dns/,
  );
  // peerA's certificate names 127.0.0.1, but that does not help once a list is set.
  assert.match(
    (await fetchFails(certs.peerA, config({ server_name_urls: [uri] })))!,
    /names URI:\[spiffe:\/\/strata\.test\/peer-a\]/,
  );
});

test("the options work for tls.connect as well (the replication stream's connections)", async () => {
  const url = new URL(await urlOf(certs.peerB));
  const attempt = (tlsConfig: PeerTlsConfig) =>
    new Promise<string>((resolve) => {
      const socket = connect({
        host: url.hostname,
        port: Number(url.port),
        ...outboundTlsOptions(tlsConfig),
      });
      socket.on("secureConnect", () => {
        socket.destroy();
        resolve("ok");
      });
      socket.on("error", (err) => resolve(describeTlsError(err)));
    });
  assert.equal(await attempt(config({ server_name_dns: ["peer-b.strata.test"] })), "ok");
  assert.match(
    await attempt(config({ server_name_dns: ["nope"] })),
    /^the peer's certificate names DNS:\[peer-b\.strata\.test\]; none is in/,
  );
  assert.match(
    await attempt(config({ tls_ca: certs.otherCa.cert, server_name_dns: ["peer-b.strata.test"] })),
    /not signed by a CA/,
  );
});

test("https:// to a peer serving plain HTTP says to use http://", async () => {
  const server = createHttpServer((_req, res) => res.end("{}"));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  servers.push(server);
  const keys = new PeerKeys({
    peers: [
      {
        name: "plain",
        jwksUrl: `https://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`,
      },
    ],
    ownKid: me.kid,
    tls: outboundTlsOptions(config()),
    log,
  });
  await assert.rejects(keys.peerKid("plain"));
  assert.match(
    keys.fetchError("plain")!,
    /^no TLS handshake with the peer \(wrong version number\): if the peer serves plain HTTP \(no cluster.remotesapi.tls_key\), use http:\/\/ in its URL$/,
  );
});

// --- pieces ---------------------------------------------------------------------------------

test("subjectAltNames reads Node's subjectaltname format, including quoted values", () => {
  assert.deepEqual(subjectAltNames(undefined), { dns: [], uris: [] });
  assert.deepEqual(subjectAltNames(""), { dns: [], uris: [] });
  assert.deepEqual(
    subjectAltNames("DNS:a.test, URI:spiffe://x/y, IP Address:127.0.0.1, DNS:b.test, email:e@x"),
    {
      dns: ["a.test", "b.test"],
      uris: ["spiffe://x/y"],
    },
  );
  // A comma inside a name is quoted by Node, and must not split it into two names.
  assert.deepEqual(subjectAltNames('DNS:"evil.test, DNS:peer-b.strata.test", URI:"spiffe://x/a,b"'), {
    dns: ["evil.test, DNS:peer-b.strata.test"],
    uris: ["spiffe://x/a,b"],
  });
  const check = outboundTlsOptions(config({ server_name_dns: ["peer-b.strata.test"] })).checkServerIdentity;
  const cert = { subjectaltname: 'DNS:"evil.test, DNS:peer-b.strata.test"' } as PeerCertificate;
  assert.match(check("127.0.0.1", cert)!.message, /none is in/);
});

test("describeTlsError: Node's verification errors get a reason and a fix", () => {
  const withCode = (code: string, extra: object = {}) =>
    Object.assign(new Error(`openssl says ${code}`), { code }, extra);
  assert.match(
    describeTlsError(withCode("SELF_SIGNED_CERT_IN_CHAIN")),
    /chain ends in a self-signed CA that is not in cluster\.remotesapi\.tls_ca/,
  );
  assert.match(
    describeTlsError(withCode("DEPTH_ZERO_SELF_SIGNED_CERT")),
    /is self-signed and not in cluster\.remotesapi\.tls_ca \(DEPTH_ZERO_SELF_SIGNED_CERT\): add that certificate/,
  );
  assert.match(
    describeTlsError(withCode("UNABLE_TO_VERIFY_LEAF_SIGNATURE")),
    /^the peer's certificate is not signed by a CA in cluster\.remotesapi\.tls_ca/,
  );
  assert.equal(
    describeTlsError(withCode("CERT_HAS_EXPIRED")),
    "the peer's certificate has expired (CERT_HAS_EXPIRED): renew the peer's cluster.remotesapi.tls_cert (and check both machines' clocks)",
  );
  assert.match(
    describeTlsError(withCode("CERT_HAS_EXPIRED"), {
      valid_to: "Mar  4 05:06:07 2021 GMT",
    } as PeerCertificate),
    /expired on 2021-03-04T05:06:07\.000Z/,
  );
  assert.match(
    describeTlsError(withCode("ERR_TLS_CERT_ALTNAME_INVALID", { host: "db1" })),
    /not for db1: use a host/,
  );
  assert.equal(describeTlsError(withCode("EHOSTUNREACH")), "openssl says EHOSTUNREACH");
  assert.equal(describeTlsError(withCode("EWHATEVER").message), "openssl says EWHATEVER");
  assert.equal(describeTlsError(Object.assign(new Error("boom"), { code: "EX" })), "boom (EX)");
});
