// libvirt connection URIs (https://libvirt.org/uri.html): DRIVER[+TRANSPORT]://[USER@][HOST][:PORT]/PATH[?PARAMS].
// A URI reaches another machine when it names a host or a network transport; `+unix` and no
// host (qemu:///system) stay on this one.
import { VircptError } from '../errors.js';

export interface LibvirtUri {
  driver: string;
  /** unix, ssh, libssh, libssh2, tls, tcp, ext; '' when the URI names none. */
  transport: string;
  user: string | undefined;
  /** '' for a local URI. */
  host: string;
  port: number | undefined;
  path: string;
  params: Map<string, string>;
}

const SHAPE = /^([a-z][a-z0-9]*)(?:\+([a-z0-9]+))?:\/\/(?:([^@/?#]*)@)?(\[[^\]]*\]|[^:/?#]*)(?::(\d+))?(\/[^?#]*)?(?:\?([^#]*))?$/i;
const NETWORK = new Set(['ssh', 'libssh', 'libssh2', 'tls', 'tcp', 'ext']);

export function parseLibvirtUri(uri: string): LibvirtUri {
  const m = SHAPE.exec(uri);
  if (m === null) throw new VircptError('USAGE', `${uri}: not a libvirt URI (like qemu:///system or qemu+ssh://host/system)`);
  const params = new Map<string, string>();
  for (const kv of (m[7] ?? '').split('&').filter((x) => x.length > 0)) {
    const at = kv.indexOf('=');
    params.set(decodeURIComponent(at < 0 ? kv : kv.slice(0, at)), at < 0 ? '' : decodeURIComponent(kv.slice(at + 1)));
  }
  const host = m[4]!.startsWith('[') ? m[4]!.slice(1, -1) : m[4]!;
  return {
    driver: m[1]!.toLowerCase(), transport: (m[2] ?? '').toLowerCase(), user: m[3] || undefined,
    host, port: m[5] ? Number(m[5]) : undefined, path: m[6] ?? '/', params,
  };
}

/** Whether the URI reaches a libvirtd over the network (its host, or its transport, says so). */
export function isRemoteUri(uri: string): boolean {
  let u: LibvirtUri;
  try {
    u = parseLibvirtUri(uri);
  } catch {
    return false; // not a URI at all: virsh will say so
  }
  if (u.transport === 'unix') return false;
  return u.host !== '' || NETWORK.has(u.transport);
}

/** The host a remote URI names ('localhost' when a network transport names none). */
export function uriHost(uri: string): string {
  return parseLibvirtUri(uri).host || 'localhost';
}
