// Disks hot-plugged into another running domain (a scanner): its live devices as far as plugging
// needs them, the XML of a read-only disk, and the attach and detach calls.
import { VircptError } from '../errors.js';
import { parseDomainXml, type DomainDetails } from './domain.js';
import type { Virsh } from './virsh.js';
import { attr, child, children, parseXml, text, type XmlNode } from './xml.js';

export type HotplugBus = 'scsi' | 'virtio';

/** A disk in a domain's live XML. */
export interface LiveDisk {
  target: string;
  bus: string | undefined;
  /** The user alias (ua-...) or libvirt's. */
  alias: string | undefined;
  /** NBD over a Unix socket: the socket and export name; a file disk: the file. */
  socket: string | undefined;
  exportName: string | undefined;
  file: string | undefined;
  readOnly: boolean;
  serial: string | undefined;
  /** `scsi 0:0:0:1` (controller:bus:target:unit) or `pci 0000:01:00.0`. */
  address: string | undefined;
}

export interface HotplugView {
  details: DomainDetails;
  disks: LiveDisk[];
  /** Indexes of virtio-scsi controllers. */
  virtioScsi: number[];
  /** controller:bus:target:unit of every SCSI drive address in use (disks and host devices). */
  driveAddresses: Set<string>;
}

/** The domain's live state and devices; DOMAIN_NOT_FOUND when there is no such domain. */
export async function hotplugView(virsh: Virsh, name: string): Promise<HotplugView> {
  const [xml, state] = await Promise.all([virsh.run(['dumpxml', '--', name]), virsh.run(['domstate', '--', name])]);
  const view = parseHotplugView(xml, state.trim());
  if (view.details.name === name.trim()) view.details.name = name; // see getDomain
  return view;
}

export function parseHotplugView(xml: string, state: string): HotplugView {
  const details = parseDomainXml(xml, state);
  const devices = child(child(parseXml(xml), 'domain'), 'devices');
  const driveAddresses = new Set<string>();
  // SATA and IDE disks have drive addresses too, on controllers of their own type.
  const onScsi = [...children(devices, 'disk').filter((d) => attr(child(d, 'target'), 'bus') === 'scsi'),
    ...children(devices, 'hostdev').filter((h) => attr(h, 'type') === 'scsi')];
  for (const d of onScsi) {
    const a = child(d, 'address');
    if (attr(a, 'type') === 'drive') driveAddresses.add(driveKey(a));
  }
  const virtioScsi = children(devices, 'controller')
    .filter((c) => attr(c, 'type') === 'scsi' && attr(c, 'model') === 'virtio-scsi')
    .map((c) => Number(attr(c, 'index') ?? '0'));
  return { details, disks: children(devices, 'disk').map(liveDisk), virtioScsi, driveAddresses };
}

const driveKey = (a: XmlNode | undefined) => ['controller', 'bus', 'target', 'unit'].map((k) => attr(a, k) ?? '0').join(':');

function liveDisk(d: XmlNode): LiveDisk {
  const source = child(d, 'source');
  const host = children(source, 'host')[0];
  const a = child(d, 'address');
  const pci = (k: string) => (attr(a, k) ?? '0x0').replace(/^0x/, '');
  const address = attr(a, 'type') === 'drive' ? `scsi ${driveKey(a)}`
    : attr(a, 'type') === 'pci' ? `pci ${pci('domain').padStart(4, '0')}:${pci('bus').padStart(2, '0')}:${pci('slot').padStart(2, '0')}.${pci('function')}`
    : undefined;
  return {
    target: attr(child(d, 'target'), 'dev') ?? '',
    bus: attr(child(d, 'target'), 'bus'),
    alias: attr(child(d, 'alias'), 'name'),
    socket: attr(host, 'transport') === 'unix' ? attr(host, 'socket') : undefined,
    exportName: attr(source, 'protocol') === 'nbd' ? attr(source, 'name') : undefined,
    file: attr(source, 'file'),
    readOnly: 'readonly' in d, // <readonly/> parses as an empty string
    serial: text(d, 'serial'),
    address,
  };
}

/** sda, ..., sdz, sdaa, ...: libvirt's naming of the n-th disk of a bus prefix. */
export function diskName(prefix: string, n: number): string {
  let s = '';
  for (let i = n + 1; i > 0; i = Math.floor((i - 1) / 26)) s = String.fromCharCode(97 + ((i - 1) % 26)) + s;
  return prefix + s;
}

/** The first target name with this prefix that no disk (nor one planned) uses. */
export function freeTarget(view: HotplugView, prefix: string, taken: Set<string>): string {
  const used = new Set([...view.disks.map((d) => d.target), ...taken]);
  for (let n = 0; ; n++) if (!used.has(diskName(prefix, n))) return diskName(prefix, n);
}

/** The first free unit on bus 0, target 0 of the first virtio-scsi controller. */
export function freeDriveAddress(view: HotplugView, taken: Set<string>): { controller: number; unit: number } {
  const controller = view.virtioScsi[0];
  if (controller === undefined) throw new VircptError('UNSUPPORTED', 'no virtio-scsi controller');
  for (let unit = 0; unit < 16384; unit++) {
    const key = `${controller}:0:0:${unit}`;
    if (!view.driveAddresses.has(key) && !taken.has(key)) return { controller, unit };
  }
  throw new VircptError('UNSUPPORTED', `virtio-scsi controller ${controller} has no free unit`);
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

export interface ReadOnlyDisk {
  /** NBD over a Unix socket, or a raw file (a vircptfs mount's <target>.raw). */
  source: { socket: string; exportName: string } | { file: string };
  target: string;
  bus: HotplugBus;
  /** SCSI only: the drive address (bus and target 0). */
  drive?: { controller: number; unit: number };
  serial: string;
  /** A user alias, ua-...: how detach finds exactly this device. */
  alias: string;
}

/** The <disk> of a read-only hot-plugged disk. */
export function readOnlyDiskXml(d: ReadOnlyDisk): string {
  const source = 'socket' in d.source
    ? `<disk type='network' device='disk'>
  <driver name='qemu' type='raw'/>
  <source protocol='nbd' name='${esc(d.source.exportName)}'>
    <host transport='unix' socket='${esc(d.source.socket)}'/>
  </source>`
    // A file of a read-only filesystem: libvirt must not try to chown it to QEMU's user.
    : `<disk type='file' device='disk'>
  <driver name='qemu' type='raw'/>
  <source file='${esc(d.source.file)}'>
    <seclabel model='dac' relabel='no'/>
  </source>`;
  const address = d.drive ? `\n  <address type='drive' controller='${d.drive.controller}' bus='0' target='0' unit='${d.drive.unit}'/>` : '';
  return `${source}
  <target dev='${esc(d.target)}' bus='${d.bus}'/>
  <serial>${esc(d.serial)}</serial>
  <readonly/>
  <alias name='${esc(d.alias)}'/>${address}
</disk>
`;
}

export async function attachDisk(virsh: Virsh, domain: string, d: ReadOnlyDisk): Promise<void> {
  await virsh.runWithXml(['attach-device', '--live', '--', domain, '{xml}'], readOnlyDiskXml(d), { timeoutMs: 30_000 });
}

/**
 * Asks for the device's removal and returns at once (detach-device-alias does not wait for the
 * guest, unlike detach-device's built-in 5 s wait): the caller watches the live XML.
 */
export async function requestDetach(virsh: Virsh, domain: string, alias: string): Promise<void> {
  await virsh.run(['detach-device-alias', '--live', '--', domain, alias], { timeoutMs: 30_000 });
}
