// NBD URIs (NetworkBlockDevice/nbd doc/uri.md), read and written as libnbd does
// (lib/uri.c): `nbd+unix:///EXPORT?socket=PATH` and `nbd://HOST:PORT/EXPORT`.

import { VircptError } from '../errors.js';

export interface NbdUri {
  exportName: string;
  socketPath?: string;
  host?: string;
  port?: number;
  /** nbds / nbds+unix: TLS required (this client does not speak TLS yet). */
  tls: boolean;
}

/** doc/uri.md: "If the port field is not present then it MUST default to ... 10809". */
export const NBD_DEFAULT_PORT = 10809;

const URI_SHAPE = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$/i;
const SCHEMES: Record<string, { unix: boolean; tls: boolean }> = {
  'nbd': { unix: false, tls: false },
  'nbds': { unix: false, tls: true },
  'nbd+unix': { unix: true, tls: false },
  'nbds+unix': { unix: true, tls: true },
};

function bad(uri: string, why: string): VircptError {
  return new VircptError('INVALID', `bad NBD URI '${uri}': ${why}`);
}

function decode(uri: string, text: string): string {
  try {
    return decodeURIComponent(text);
  } catch (cause) {
    throw bad(uri, `bad percent-encoding in '${text}'`);
  }
}

/** Query parameters split on '&' or ';', "name" alone meaning an empty value (lib/uri.c). */
function parseQuery(uri: string, query: string): Map<string, string> {
  const params = new Map<string, string>();
  for (const part of query.split(/[&;]/)) {
    const eq = part.indexOf('=');
    if (part === '' || eq === 0) continue;
    params.set(decode(uri, eq < 0 ? part : part.slice(0, eq)), eq < 0 ? '' : decode(uri, part.slice(eq + 1)));
  }
  return params;
}

function parseAuthority(uri: string, authority: string): { host: string; port: number } {
  const hostPort = authority.slice(authority.lastIndexOf('@') + 1); // userinfo is for TLS only
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(hostPort);
  if (m === null) throw bad(uri, `bad authority '${authority}'`);
  const host = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!;
  const port = m[2] ? Number(m[2]) : NBD_DEFAULT_PORT;
  if (!(port > 0 && port < 65536)) throw bad(uri, `bad port '${m[2]}'`);
  return { host: host === '' ? 'localhost' : decode(uri, host), port };
}

export function parseNbdUri(uri: string): NbdUri {
  const m = URI_SHAPE.exec(uri);
  if (m === null) throw bad(uri, 'expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH');
  const scheme = SCHEMES[m[1]!.toLowerCase()];
  if (scheme === undefined) throw bad(uri, `unknown scheme '${m[1]}'`);
  const [, , authority = '', path = '', query = ''] = m;
  // doc/uri.md: the export name is the path without its leading '/'.
  const exportName = decode(uri, path.startsWith('/') ? path.slice(1) : path);
  const socketPath = parseQuery(uri, query).get('socket');
  if (scheme.unix) {
    if (socketPath === undefined) throw bad(uri, 'a Unix socket URI needs ?socket=PATH');
    return { exportName, socketPath, tls: scheme.tls };
  }
  if (socketPath !== undefined) throw bad(uri, `socket= needs the ${scheme.tls ? 'nbds' : 'nbd'}+unix scheme`);
  return { exportName, ...parseAuthority(uri, authority), tls: scheme.tls };
}

/** What libxml2's xmlSaveUri leaves unescaped in a path. */
function escapePath(text: string): string {
  return Array.from(Buffer.from(text, 'utf8'), (b) => {
    const c = String.fromCharCode(b);
    return /[A-Za-z0-9\-_.!~*'()/;@&=+$,]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }).join('');
}

/** libnbd writes the socket path raw; escape only what would not read back the same. */
function escapeQueryValue(text: string): string {
  return Array.from(Buffer.from(text, 'utf8'), (b) => {
    const c = String.fromCharCode(b);
    return b > 0x20 && b < 0x7f && !'%&;#'.includes(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }).join('');
}

export function formatNbdUri(target: Omit<NbdUri, 'tls'> & { tls?: boolean }): string {
  const tls = target.tls ?? false;
  const path = `/${escapePath(target.exportName)}`;
  if (target.socketPath !== undefined) {
    return `${tls ? 'nbds' : 'nbd'}+unix://${path}?socket=${escapeQueryValue(target.socketPath)}`;
  }
  const host = target.host ?? 'localhost';
  const server = host.includes(':') ? `[${host}]` : host;
  return `${tls ? 'nbds' : 'nbd'}://${server}:${target.port ?? NBD_DEFAULT_PORT}${path}`;
}
