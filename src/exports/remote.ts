// What a remote export needs besides the libvirt URI: where QEMU's NBD server binds on the
// hypervisor (nbd_bind=), the address we dial and check in its certificate (nbd_host=), the
// port range to take from (nbd_ports=, for firewall rules), TLS (nbd_tls=, nbd_certs=).
import { isIP } from 'node:net';
import { VircptError } from '../errors.js';
import { uriHost } from '../libvirt/uri.js';
import { DEFAULT_NBD_CERTS, NBD_TLS_MODES, type NbdTlsMode } from '../nbd/tls.js';

export interface PortRange { from: number; to: number }

/** 64 ports from NBD's own: documented for firewall rules (README). */
export const DEFAULT_NBD_PORTS: PortRange = { from: 10809, to: 10872 };
/** Where scratch files go on the hypervisor unless scratch= says: a folder every host has. */
export const DEFAULT_REMOTE_SCRATCH = '/var/tmp';

export interface RemoteOptions {
  bind?: string | undefined;
  host?: string | undefined;
  ports?: PortRange | undefined;
  tls?: NbdTlsMode | undefined;
  certs?: string | undefined;
}

export interface RemoteTarget {
  uri: string;
  bind: string;
  host: string;
  ports: PortRange;
  tls: NbdTlsMode;
  certs: string;
}

function usage(message: string): VircptError {
  return new VircptError('USAGE', message);
}

export function parsePorts(text: string, what = 'nbd_ports'): PortRange {
  const m = /^(\d+)-(\d+)$/.exec(text.trim());
  const from = Number(m?.[1]);
  const to = Number(m?.[2]);
  if (!m || from < 1 || to > 65535 || from > to) throw usage(`${what}=${text}: expected a port range FROM-TO within 1-65535 (like 10809-10872)`);
  return { from, to };
}

export function parseTlsMode(text: string, what = 'nbd_tls'): NbdTlsMode {
  if (!(NBD_TLS_MODES as readonly string[]).includes(text)) throw usage(`${what}=${text}: expected require, prefer or off`);
  return text as NbdTlsMode;
}

/** Loopback never leaves the machine: there TLS is only preferred by default. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  return isIP(host) === 4 && host.startsWith('127.');
}

/** The remote settings of a URI, with the defaults filled in. */
export function remoteTarget(uri: string, o: RemoteOptions = {}): RemoteTarget {
  const uriName = uriHost(uri);
  const host = o.host ?? uriName;
  return {
    uri,
    bind: o.bind ?? uriName,
    host,
    ports: o.ports ?? DEFAULT_NBD_PORTS,
    tls: o.tls ?? (isLoopback(host) ? 'prefer' : 'require'),
    certs: o.certs ?? DEFAULT_NBD_CERTS,
  };
}

/** Ports of exports this process started and has not ended: never offered twice. */
const taken = new Set<number>();

/** The ports to try, in order: the range without those of our own running exports. */
export function candidatePorts(range: PortRange): number[] {
  const out: number[] = [];
  for (let p = range.from; p <= range.to; p++) if (!taken.has(p)) out.push(p);
  return out;
}

export function takePort(port: number): void { taken.add(port); }
export function freePort(port: number): void { taken.delete(port); }
