// Tests need real tools. A missing one fails the test loudly, naming the Debian package.
import { execa } from 'execa';

const PACKAGE_OF: Record<string, string> = {
  virsh: 'libvirt-clients',
  'qemu-img': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  'qemu-storage-daemon': 'qemu-system-common',
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdfuse: 'libnbd-bin',
  nbdkit: 'nbdkit',
  fusermount3: 'fuse3',
  'mkfs.ext4': 'e2fsprogs',
  sfdisk: 'fdisk',
  clamscan: 'clamav',
  sigtool: 'clamav',
  jq: 'jq',
  rsync: 'rsync',
  losetup: 'mount',
  runuser: 'util-linux',
  findmnt: 'util-linux',
  useradd: 'passwd',
  groupadd: 'passwd',
  userdel: 'passwd',
  groupdel: 'passwd',
  python3: 'python3',
};

const seen = new Map<string, Promise<void>>();

export function requireTool(name: string): Promise<void> {
  let p = seen.get(name);
  if (!p) {
    p = execa('sh', ['-c', `command -v ${name}`], { reject: false }).then((r) => {
      if (r.exitCode !== 0) {
        const pkg = PACKAGE_OF[name] ?? 'the package that provides it';
        throw new Error(`${name} is required for this test: install the Debian package ${pkg} (scripts/setup.sh does)`);
      }
    });
    seen.set(name, p);
  }
  return p;
}

export async function requireTools(...names: string[]): Promise<void> {
  await Promise.all(names.map(requireTool));
}

/** Runs a command; throws with its stderr on failure. */
export async function run(cmd: string, args: string[], opts: { input?: string | Buffer; timeout?: number } = {}): Promise<string> {
  const r = await execa(cmd, args, { env: { LC_ALL: 'C' }, reject: false, timeout: opts.timeout ?? 120_000, input: opts.input, encoding: 'utf8' });
  if (r.exitCode !== 0 || r.failed) throw new Error(`${cmd} ${args.join(' ')} failed (${r.exitCode}): ${String(r.stderr || r.message).trim()}`);
  return String(r.stdout);
}
