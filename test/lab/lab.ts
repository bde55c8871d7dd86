// The lab: real libvirt domains (TCG, started paused: they never touch their disks and burn no
// CPU), qcow2 disks, simulated guest writes through QEMU's block layer (HMP qemu-io), and a
// teardown that removes everything a test made, also when it fails. Names carry the test run's
// pid and a random suffix, so parallel test files never collide.
import { randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { makeEmptyImage, makeExt4Image } from './images.js';
import { requireTools, run } from './tools.js';

export const LAB_URI = 'qemu:///system';
export const LAB_ROOT = '/var/tmp/vircptfs-lab';

export interface LabDisk {
  target: string;
  bus?: 'sata' | 'virtio';
  size: number;
  format?: 'qcow2' | 'raw';
  /** Files for a GPT + ext4 disk; empty disk when absent. */
  files?: Record<string, string | Buffer>;
  /** A prebuilt image (of `format`, `size` bytes) copied into place instead of a new one. */
  image?: string;
}

export interface LabVmOptions {
  disks: LabDisk[];
  /** Start it (paused); default true. */
  start?: boolean;
  /** The domain's name from the lab's unique prefix (odd names: spaces, a leading dash, ...);
   *  default `<prefix>-<n>`. */
  name?: (prefix: string) => string;
  /** A scanner for hot-plug tests: a virtio-scsi controller and free PCIe root ports. */
  scanner?: boolean;
}

export function virsh(...args: string[]): Promise<string> {
  return run('virsh', ['-q', '-c', LAB_URI, ...args]);
}

export class LabVm {
  constructor(
    readonly name: string,
    readonly dir: string,
    readonly disks: Required<Omit<LabDisk, 'files' | 'image'>>[],
  ) {}

  image(target: string): string {
    return path.join(this.dir, `${target}.${this.disk(target).format}`);
  }

  disk(target: string): Required<Omit<LabDisk, 'files' | 'image'>> {
    const d = this.disks.find((x) => x.target === target);
    if (!d) throw new Error(`lab VM ${this.name} has no disk ${target}`);
    return d;
  }

  /** QEMU's qdev id of a disk, for qemu-io (docs/lab.md). */
  qdev(target: string): string {
    const d = this.disk(target);
    if (d.bus === 'sata') return `sata0-0-${this.disks.filter((x) => x.bus === 'sata').indexOf(d)}`;
    return `/machine/peripheral/virtio-disk${this.disks.indexOf(d)}/virtio-backend`;
  }

  /** A guest write through the running VM's block layer: dirty bitmaps see it. */
  async write(target: string, offset: number, length: number, pattern = 0xab): Promise<void> {
    const out = await virsh('qemu-monitor-command', '--hmp', '--', this.name,
      `qemu-io -d ${this.qdev(target)} "write -P ${pattern} ${offset} ${length}"`);
    if (/error|failed|invalid/i.test(out)) throw new Error(`qemu-io write on ${this.name}/${target} failed: ${out}`);
    // Flush QEMU's qcow2 metadata caches, so the image file read from outside (qemu-img -U) agrees.
    await virsh('qemu-monitor-command', '--hmp', '--', this.name, `qemu-io -d ${this.qdev(target)} "flush"`);
  }

  /**
   * The persistent bitmaps of a disk. A running QEMU keeps them in memory (the image shows them
   * only once closed), so ask QEMU while the domain is active and the image otherwise.
   */
  async bitmaps(target: string): Promise<string[]> {
    const image = this.image(target);
    if ((await this.state()) !== 'shut off') {
      const out = await virsh('qemu-monitor-command', this.name, '{"execute":"query-named-block-nodes","arguments":{"flat":true}}');
      const nodes = (JSON.parse(out) as { return: { drv: string; file: string; 'dirty-bitmaps'?: { name: string }[] }[] }).return;
      const node = nodes.find((n) => n.drv === 'qcow2' && n.file === image);
      return (node?.['dirty-bitmaps'] ?? []).map((b) => b.name).sort();
    }
    const info = JSON.parse(await run('qemu-img', ['info', '-U', '--output=json', image])) as {
      'format-specific'?: { data?: { bitmaps?: { name: string }[] } };
    };
    return (info['format-specific']?.data?.bitmaps ?? []).map((b) => b.name).sort();
  }

  start(): Promise<string> {
    return virsh('start', '--paused', '--', this.name);
  }

  destroy(): Promise<string> {
    return virsh('destroy', '--', this.name);
  }

  async state(): Promise<string> {
    return (await virsh('domstate', '--', this.name)).trim();
  }

  async jobType(): Promise<string> {
    const out = await virsh('domjobinfo', '--', this.name);
    return /^Job type:\s*(\S+)/m.exec(out)?.[1] ?? 'None';
  }
}

const xmlText = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

// Hot-plugged virtio-blk disks each need a free root port; SCSI disks go on the controller.
// libvirt puts the controller itself behind one of the ports.
const SCANNER_DEVICES = `    <controller type='pci' index='0' model='pcie-root'/>
${[1, 2, 3, 4].map((i) => `    <controller type='pci' index='${i}' model='pcie-root-port'/>`).join('\n')}
    <controller type='scsi' index='0' model='virtio-scsi'/>
`;

function domainXml(name: string, dir: string, disks: Required<Omit<LabDisk, 'files' | 'image'>>[], scanner = false): string {
  const d = disks.map((k) => `    <disk type='file' device='disk'>
      <driver name='qemu' type='${k.format}'/>
      <source file='${xmlText(path.join(dir, `${k.target}.${k.format}`))}'/>
      <target dev='${k.target}' bus='${k.bus}'/>
    </disk>`).join('\n');
  return `<domain type='qemu'>
  <name>${xmlText(name)}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
${d}
${scanner ? SCANNER_DEVICES : ''}  </devices>
</domain>
`;
}

/** One per test file: makes lab VMs and removes them all in cleanup(). */
export class Lab {
  readonly prefix: string;
  readonly dir: string;
  readonly #vms: LabVm[] = [];
  #n = 0;

  constructor(tag = 'lab') {
    this.prefix = `vcptlab-${tag}-${process.pid}-${randomBytes(3).toString('hex')}`;
    this.dir = path.join(LAB_ROOT, this.prefix);
  }

  async vm(opts: LabVmOptions): Promise<LabVm> {
    await requireTools('virsh', 'qemu-img');
    const n = ++this.#n;
    const name = opts.name?.(this.prefix) ?? `${this.prefix}-${n}`;
    const dir = path.join(this.dir, opts.name ? `vm-${n}` : name); // an odd name need not be a path
    await mkdir(dir, { recursive: true });
    for (const p of [LAB_ROOT, this.dir, dir]) await chmod(p, 0o755); // libvirt-qemu must traverse
    const disks = opts.disks.map((d) => ({ bus: d.bus ?? 'virtio', format: d.format ?? 'qcow2', target: d.target, size: d.size }));
    for (const [i, d] of disks.entries()) {
      const file = path.join(dir, `${d.target}.${d.format}`);
      const { files, image } = opts.disks[i]!;
      if (image) await copyFile(image, file).then(() => chmod(file, 0o644));
      else if (files) await makeExt4Image(file, d.size, files);
      else await makeEmptyImage(file, d.size, d.format);
    }
    const vm = new LabVm(name, dir, disks);
    this.#vms.push(vm);
    const xmlFile = path.join(dir, 'domain.xml');
    await writeFile(xmlFile, domainXml(name, dir, disks, opts.scanner));
    await virsh('define', xmlFile);
    if (opts.start !== false) await vm.start();
    return vm;
  }

  /** Destroys and undefines every VM (checkpoint metadata included), then removes the files. */
  async cleanup(): Promise<void> {
    for (const vm of this.#vms) {
      await execa('virsh', ['-q', '-c', LAB_URI, 'destroy', '--', vm.name], { reject: false });
      await execa('virsh', ['-q', '-c', LAB_URI, 'undefine', '--checkpoints-metadata', '--', vm.name], { reject: false });
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
