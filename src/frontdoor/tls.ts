// The listener's TLS credentials (listener.tls_key, listener.tls_cert), loaded once at start.
import { createSecureContext, type SecureContext } from "node:tls";
import { loadTlsFiles } from "../tls-files.ts";

export function loadTlsContext(keyFile: string, certFile: string): SecureContext {
  return createSecureContext(loadTlsFiles("listener", keyFile, certFile));
}
