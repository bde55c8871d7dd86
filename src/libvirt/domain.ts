// Domains and their disks, parsed once into typed objects.
import { VircptError } from '../errors.js';
import type { Virsh } from './virsh.js';
import { attr, child, children, parseXml, text, type XmlNode } from './xml.js';

export interface Domain {
  name: string;
  uuid: string;
  /** Has a QEMU process (running, paused, ...): backup jobs are possible. */
  active: boolean;
  /** libvirt's state word: running, paused, shut off, ... */
  state: string;
}

export interface Disk {
  /** The guest-visible target: sda, vdb, ... (export names and file names use it). */
  target: string;
  bus: string | undefined;
  /** Image format from <driver type>: qcow2, raw, ... */
  format: string;
  /** The image path for file disks, the device for block disks. */
  source: string | undefined;
  sourceType: string;
  /** QEMU's device alias (sata0-0-0, virtio-disk1), for lab writes through qemu-io. */
  alias: string | undefined;
}

export interface DomainDetails extends Domain {
  disks: Disk[];
  /** The uid:gid QEMU runs as (a running domain's DAC label). */
  qemuUser: { uid: number; gid: number } | undefined;
  /** The domain has a QEMU guest-agent channel (fsfreeze is worth asking for). */
  agentChannel: boolean;
}

const AGENT_CHANNEL = 'org.qemu.guest_agent.0';

export interface BlockInfo {
  capacity: number;
  allocation: number;
  physical: number;
}

/** Disks that can carry a checkpoint: qcow2 images on disk devices. */
export function checkpointable(disk: Disk): boolean {
  return disk.format === 'qcow2';
}

export async function listDomains(virsh: Virsh): Promise<Domain[]> {
  const [all, active] = await Promise.all([
    virsh.run(['list', '--all', '--name']),
    virsh.run(['list', '--name']),
  ]);
  const activeSet = new Set(nameLines(active));
  return nameLines(all).map((name) => ({ name, uuid: '', active: activeSet.has(name), state: activeSet.has(name) ? 'active' : 'shut off' }));
}

export async function getDomain(virsh: Virsh, name: string): Promise<DomainDetails> {
  const [xml, state] = await Promise.all([
    virsh.run(['dumpxml', '--', name]),
    virsh.run(['domstate', '--', name]),
  ]);
  const dom = parseDomainXml(xml, state.trim());
  // The XML parser trims text, and a domain's name may begin or end with spaces or a tab: when
  // libvirt found the domain by the very name asked for, that name is the exact one (a trimmed
  // name would be another domain's).
  if (dom.name === name.trim()) dom.name = name;
  return dom;
}

export function parseDomainXml(xml: string, state: string): DomainDetails {
  const dom = child(parseXml(xml), 'domain');
  if (!dom) throw new VircptError('LIBVIRT', 'libvirt returned a domain description without <domain>');
  const name = text(dom, 'name') ?? '';
  const disks = children(child(dom, 'devices'), 'disk')
    .filter((d) => (attr(d, 'device') ?? 'disk') === 'disk') // cdrom, floppy, lun: not ours
    .map(parseDisk)
    .filter((d): d is Disk => d !== undefined);
  return {
    name,
    uuid: text(dom, 'uuid') ?? '',
    active: state !== 'shut off' && state !== 'crashed',
    state,
    disks,
    qemuUser: dacLabel(dom),
    agentChannel: children(child(dom, 'devices'), 'channel').some((c) => attr(child(c, 'target'), 'name') === AGENT_CHANNEL),
  };
}

function parseDisk(d: XmlNode): Disk | undefined {
  const target = attr(child(d, 'target'), 'dev');
  if (!target) return undefined;
  const source = child(d, 'source');
  return {
    target,
    bus: attr(child(d, 'target'), 'bus'),
    format: attr(child(d, 'driver'), 'type') ?? 'raw',
    source: attr(source, 'file') ?? attr(source, 'dev') ?? attr(source, 'name'),
    sourceType: attr(d, 'type') ?? 'file',
    alias: attr(child(d, 'alias'), 'name'),
  };
}

function dacLabel(dom: XmlNode): { uid: number; gid: number } | undefined {
  for (const s of children(dom, 'seclabel')) {
    if (attr(s, 'model') !== 'dac') continue;
    const m = /^\+?(\d+):\+?(\d+)$/.exec(text(s, 'label') ?? '');
    if (m) return { uid: Number(m[1]), gid: Number(m[2]) };
  }
  return undefined;
}

/** Capacity/allocation of every disk, by target (domblkinfo --all). */
export async function blockInfo(virsh: Virsh, name: string): Promise<Map<string, BlockInfo>> {
  const out = await virsh.run(['domblkinfo', '--all', '--', name]);
  const info = new Map<string, BlockInfo>();
  for (const line of lines(out)) {
    const f = line.trim().split(/\s+/);
    if (f.length !== 4 || !/^\d+$/.test(f[1]!)) continue; // header and ruler lines
    info.set(f[0]!, { capacity: Number(f[1]), allocation: Number(f[2]), physical: Number(f[3]) });
  }
  return info;
}

/** One name a line, exactly as libvirt has it: a domain's name may begin or end with spaces (or
 *  tabs), and trimming it would name another domain. Only a newline cannot be in one. */
export function nameLines(out: string): string[] {
  return out.split('\n').filter((l) => l.length > 0);
}

export function lines(out: string): string[] {
  return out.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
}
