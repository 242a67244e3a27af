// TLS key and certificate files named in config.yaml (listener.tls_*, remotesapi.tls_*), read
// and checked together once at start, so that a missing file or a key that does not match its
// certificate stops the server naming the key to fix, rather than failing each handshake later.
import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";

/** The PEM key and certificate of config section `section` (its tls_key and tls_cert). */
export function loadTlsFiles(
  section: string,
  keyFile: string,
  certFile: string,
): { key: Buffer; cert: Buffer } {
  const key = readPem(keyFile, `${section}.tls_key`, "a PEM private key");
  const cert = readPem(certFile, `${section}.tls_cert`, "a PEM certificate (chain)");
  try {
    createSecureContext({ key, cert });
  } catch (err) {
    throw new Error(
      `${section}.tls_key (${keyFile}) and ${section}.tls_cert (${certFile}) cannot be used together: ${(err as Error).message}; give the certificate and the private key it was issued for, both in PEM`,
    );
  }
  return { key, cert };
}

function readPem(file: string, key: string, what: string): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new Error(`${key}: cannot read ${file} (${code}); set it to ${what} readable by Strata`);
  }
  if (!pem.includes("-----BEGIN ")) throw new Error(`${key}: ${file} is not ${what}`);
  return pem;
}
