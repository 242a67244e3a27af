// Throwaway certificates for tests of TLS between cluster peers: a CA of our own, leaf certificates
// it issues with chosen subject alternative names (DNS, URI, IP), an expired leaf, and a second,
// unrelated CA. Made with openssl in a temp dir (removed at exit); EC P-256 keys, which are quick
// to make. Files, not buffers, since config.yaml names files.
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "./postgres.ts";

export interface TestCa {
  /** the CA's certificate, PEM: what cluster.remotesapi.tls_ca names */
  cert: string;
  key: string;
  dir: string;
  name: string;
}

export interface TestLeaf {
  key: string;
  cert: string;
  /** both files' contents, for https.createServer */
  pem: { key: Buffer; cert: Buffer };
}

export interface LeafNames {
  dns?: string[];
  uris?: string[];
  ips?: string[];
}

function openssl(args: string[], cwd?: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/** A self-signed CA, good for two days. */
export function makeCa(name = "Strata Test CA"): TestCa {
  const dir = tempDir("strata-cluster-ca-");
  const cert = join(dir, "ca.pem");
  const key = join(dir, "ca.key");
  openssl([
    "req",
    "-x509",
    ...EC_KEY,
    "-keyout",
    key,
    "-out",
    cert,
    "-days",
    "2",
    "-subj",
    `/CN=${name}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  return { cert, key, dir, name };
}

let leaves = 0;

/**
 * A server certificate issued by `ca` for the given names (at least one). `expired` makes one
 * valid only on 1-2 January 2020, through `openssl ca`, the one openssl 3.0 command that takes
 * explicit dates.
 */
export function makeLeaf(ca: TestCa, names: LeafNames, options: { expired?: boolean } = {}): TestLeaf {
  const dir = join(ca.dir, `leaf-${++leaves}`);
  mkdirSync(dir);
  const key = join(dir, "key.pem");
  const cert = join(dir, "cert.pem");
  const csr = join(dir, "req.csr");
  const san = [
    ...(names.dns ?? []).map((n) => `DNS:${n}`),
    ...(names.uris ?? []).map((n) => `URI:${n}`),
    ...(names.ips ?? []).map((n) => `IP:${n}`),
  ];
  if (san.length === 0) throw new Error("makeLeaf: give at least one name");
  const ext = join(dir, "ext.cnf");
  writeFileSync(
    ext,
    `subjectAltName=${san.join(",")}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`,
  );
  openssl(["req", "-new", ...EC_KEY, "-keyout", key, "-out", csr, "-subj", "/CN=strata peer"]);
  if (options.expired) {
    mkdirSync(join(dir, "db"));
    writeFileSync(join(dir, "db", "index.txt"), "");
    writeFileSync(join(dir, "db", "serial"), "01\n");
    const config = join(dir, "ca.cnf");
    writeFileSync(
      config,
      [
        "[ca]",
        "default_ca = test",
        "[test]",
        "database = db/index.txt",
        "serial = db/serial",
        "new_certs_dir = db",
        "default_md = sha256",
        "policy = any",
        "unique_subject = no",
        "[any]",
        "commonName = supplied",
        "",
      ].join("\n"),
    );
    openssl(
      [
        "ca",
        "-batch",
        "-notext",
        "-config",
        config,
        "-cert",
        ca.cert,
        "-keyfile",
        ca.key,
        "-in",
        csr,
        "-out",
        cert,
        "-extfile",
        ext,
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200102000000Z",
      ],
      dir,
    );
  } else {
    openssl([
      "x509",
      "-req",
      "-in",
      csr,
      "-CA",
      ca.cert,
      "-CAkey",
      ca.key,
      "-CAcreateserial",
      "-out",
      cert,
      "-days",
      "2",
      "-extfile",
      ext,
    ]);
  }
  return { key, cert, pem: { key: readFileSync(key), cert: readFileSync(cert) } };
}

export interface ClusterTls {
  ca: TestCa;
  /** a CA no peer's certificate comes from */
  otherCa: TestCa;
  /** for 127.0.0.1 (so the default hostname check passes), DNS peer-a.strata.test, URI spiffe://strata.test/peer-a */
  peerA: TestLeaf;
  /** only DNS peer-b.strata.test and URI spiffe://strata.test/peer-b: no address, so only server_name_* can accept it */
  peerB: TestLeaf;
  /** like peerA, expired in 2020 */
  expired: TestLeaf;
}

/** The usual set of certificates for cluster TLS tests. */
export function clusterTls(): ClusterTls {
  const ca = makeCa();
  return {
    ca,
    otherCa: makeCa("Unrelated Test CA"),
    peerA: makeLeaf(ca, {
      ips: ["127.0.0.1"],
      dns: ["peer-a.strata.test"],
      uris: ["spiffe://strata.test/peer-a"],
    }),
    peerB: makeLeaf(ca, { dns: ["peer-b.strata.test"], uris: ["spiffe://strata.test/peer-b"] }),
    expired: makeLeaf(ca, { ips: ["127.0.0.1"], dns: ["peer-a.strata.test"] }, { expired: true }),
  };
}
