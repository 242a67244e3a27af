// A throwaway self-signed certificate for localhost, for tests of TLS through the front door.
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { tempDir } from "./postgres.ts";

export function selfSignedCertificate(prefix = "strata-tls-"): { key: string; cert: string } {
  const dir = tempDir(prefix);
  const key = join(dir, "key.pem");
  const cert = join(dir, "cert.pem");
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "2",
      "-subj",
      "/CN=localhost",
    ],
    { stdio: "ignore" },
  );
  return { key, cert };
}
