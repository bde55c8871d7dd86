// A hypervisor whose QEMU has no NBD TLS certificates (backup_tls_x509_cert_dir holds none):
// libvirt starts the job and QEMU refuses it with "Unable to access credentials". Under
// nbd_tls=require that is one line saying what to configure; under prefer the export is served
// without TLS. Serial: it rewrites qemu.conf and restarts libvirtd twice (then restores both).
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { errorLines, vircpt } from '../lab/cli.js';
import { imageToRaw } from '../lab/images.js';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { LibvirtdGuard } from '../lab/libvirtd.js';
import { remoteLab } from '../lab/remote.js';

const QEMU_CONF = '/etc/libvirt/qemu.conf';
const MiB = 1024 * 1024;
const lab = remoteLab();

describe('a remote hypervisor without backup TLS', () => {
  const labVms = new Lab('notls');
  const libvirtd = new LibvirtdGuard();
  let vm: LabVm;
  let tmp: string;
  let conf: string | undefined;
  const cli = (tls: string, ...args: string[]) => vircpt(['-U', lab.sshUri, '-d', vm.name, '--nbd-tls', tls, '--nbd-certs', lab.nbdCerts,
    '--scratchdir', tmp, ...args]);

  before(async () => {
    tmp = await mkdtemp('/var/tmp/vircptfs-notls-');
    await chmod(tmp, 0o1777);
    vm = await labVms.vm({ disks: [{ target: 'sda', bus: 'sata', size: 8 * MiB }] });
    await vm.write('sda', MiB, MiB, 0x42);
    await virsh('checkpoint-create-as', vm.name, 'c1');
    await vm.write('sda', 4 * MiB, 64 * 1024, 0x43);
    // An existing folder without certificates: libvirt checks that it exists, QEMU finds it empty.
    const empty = path.join(tmp, 'no-certs');
    await rm(empty, { force: true, recursive: true });
    await import('node:fs/promises').then((fs) => fs.mkdir(empty, { mode: 0o755 }));
    conf = await readFile(QEMU_CONF, 'utf8');
    await writeFile(QEMU_CONF, `${conf.replace(/^backup_tls_x509_cert_dir\b.*$/m, '')}\nbackup_tls_x509_cert_dir = "${empty}"\n`);
    await libvirtd.restart();
  });
  after(async () => {
    if (conf !== undefined) {
      await writeFile(QEMU_CONF, conf);
      await libvirtd.restart().catch(() => libvirtd.ensureRunning());
    }
    await labVms.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('nbd_tls=require: one line naming backup_tls_x509_cert_dir; nothing started, nothing left', async () => {
    const r = await cli('require', 'map', '--name', 'c1');
    assert.equal(r.code, 1, r.stderr);
    const lines = errorLines(r.stderr);
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /NBD TLS: .*cannot serve NBD over TLS .*set backup_tls_x509_cert_dir in its \/etc\/libvirt\/qemu\.conf.*nbd_tls=prefer/);
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual((await readdir(tmp)).filter((f) => f.endsWith('.qcow2')), []);
  });

  it('nbd_tls=prefer: served without TLS, byte-exact', async () => {
    const out = path.join(tmp, 'copy');
    const r = await cli('prefer', 'copy', '--name', 'c1', '--out', out);
    assert.equal(r.code, 0, r.stderr);
    await imageToRaw(vm.image('sda'), path.join(tmp, 'ref.raw'));
    assert.ok((await readFile(path.join(out, 'sda.raw'))).equals(await readFile(path.join(tmp, 'ref.raw'))));
    assert.match(r.stderr, /no NBD TLS certificates; nbd_tls=prefer: serving without TLS/);
  });
});
