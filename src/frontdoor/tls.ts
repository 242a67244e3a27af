// The listener's TLS credentials (listener.tls_key, listener.tls_cert), loaded once at start so
// that a missing file or a key that does not match its certificate stops the server with the key
// to fix, rather than failing each client's handshake later.
import { readFileSync } from "node:fs";
import { createSecureContext, type SecureContext } from "node:tls";

export function loadTlsContext(keyFile: string, certFile: string): SecureContext {
  const key = readPem(keyFile, "listener.tls_key", "a PEM private key");
  const cert = readPem(certFile, "listener.tls_cert", "a PEM certificate (chain)");
  try {
    return createSecureContext({ key, cert });
  } catch (err) {
    throw new Error(
      `listener.tls_key (${keyFile}) and listener.tls_cert (${certFile}) cannot be used together: ${(err as Error).message}; give the certificate and the private key it was issued for, both in PEM`,
    );
  }
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
