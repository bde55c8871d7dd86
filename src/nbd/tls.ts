// NBD over TLS (proto.md "TLS support"): the client sends NBD_OPT_STARTTLS before any other
// option (the server forgets options sent before it), then runs a TLS handshake on the same TCP
// connection. x509 only: the CA that signed the server's certificate, a client certificate and
// key (QEMU verifies clients unless told not to), the dialled name or IP checked against the
// server's certificate, TLS 1.2 at least. The certificate folder uses libnbd's file names.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { VircptError } from '../errors.js';

/** require: TLS or nothing; prefer: TLS when the server offers it; off: never. */
export type NbdTlsMode = 'require' | 'prefer' | 'off';

export const NBD_TLS_MODES: readonly NbdTlsMode[] = ['require', 'prefer', 'off'];

/** libnbd's default certificate folder for root (nbd_set_tls_certificates). */
export const DEFAULT_NBD_CERTS = '/etc/pki/libnbd';

export interface NbdTlsOptions {
  mode: NbdTlsMode;
  /** A folder holding ca-cert.pem, client-cert.pem and client-key.pem (libnbd's names). */
  certs: string;
}

export interface TlsCredentials { ca: Buffer; cert: Buffer; key: Buffer; dir: string }

export function tlsError(message: string, cause?: unknown): VircptError {
  return new VircptError('NBD_TLS', `NBD TLS: ${message}`, cause === undefined ? {} : { cause });
}

/** Reads the three files; a missing one is named, with what it is for. */
export function loadCredentials(dir: string): TlsCredentials {
  const read = (name: string, what: string): Buffer => {
    try {
      return readFileSync(path.join(dir, name));
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'is missing' : `cannot be read (${(err as Error).message})`;
      throw tlsError(`${path.join(dir, name)} ${why}: nbd_certs=DIR needs ${what} (files ca-cert.pem, client-cert.pem, client-key.pem)`, err);
    }
  };
  return {
    ca: read('ca-cert.pem', 'the CA that signed the server\'s certificate'),
    cert: read('client-cert.pem', 'a client certificate from the server\'s CA (QEMU verifies clients)'),
    key: read('client-key.pem', 'the client certificate\'s key'),
    dir,
  };
}

/** One line for a failed handshake, by what went wrong. */
export function handshakeError(err: Error & { code?: string; reason?: string }, host: string, dir: string): VircptError {
  const code = err.code ?? '';
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return tlsError(`the server's certificate does not name ${host}, the address dialled (${err.reason ?? err.message}); dial a name it carries (nbd_host=) or issue it for ${host}`, err);
  }
  if (/VERIFY|SELF_SIGNED|CERT_UNTRUSTED|ISSUER|CERT_SIGNATURE/.test(code)) {
    return tlsError(`the server's certificate is not trusted by ${path.join(dir, 'ca-cert.pem')} (${code}); put the CA of the host's backup_tls_x509_cert_dir there`, err);
  }
  if (/CERT_HAS_EXPIRED|CERT_NOT_YET_VALID/.test(code)) return tlsError(`the server's certificate is not valid now (${code})`, err);
  if (/ALERT|certificate/i.test(`${code} ${err.message}`)) {
    return tlsError(`the server refused the handshake (${err.message.trim()}); it may not trust the client certificate in ${dir}`, err);
  }
  return tlsError(`handshake with ${host} failed: ${err.message}`, err);
}

export interface SecureOptions { socket: net.Socket; host: string; credentials: TlsCredentials }

/** The TLS socket over `o.socket`, and its handshake: rejected with one line (handshakeError). */
export function secureSocket(o: SecureOptions): { secure: tls.TLSSocket; handshake: Promise<void> } {
  const secure = tls.connect(tlsConnectOptions(o));
  const handshake = new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(handshakeError(err, o.host, o.credentials.dir));
    secure.once('error', onError);
    secure.once('secureConnect', () => { secure.removeListener('error', onError); resolve(); });
  });
  return { secure, handshake };
}

/** The TLS options of one handshake: SNI only for names (RFC 6066 forbids IP literals there). */
export function tlsConnectOptions(o: SecureOptions): tls.ConnectionOptions {
  return {
    socket: o.socket,
    host: o.host,
    ...(net.isIP(o.host) === 0 ? { servername: o.host } : {}),
    ca: o.credentials.ca,
    cert: o.credentials.cert,
    key: o.credentials.key,
    minVersion: 'TLSv1.2',
    rejectUnauthorized: true,
  };
}
