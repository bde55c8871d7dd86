// vircpt against a remote URI (the lab's qemu+ssh to this machine's libvirtd): export prints
// nbds:// URIs and commands with the certificates, which nbdinfo, nbdcopy and qemu-img run as
// printed; map and copy read over TLS; release ends the job and leaves no scratch file.
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ExportRecord } from '../../src/exports/export.js';
import { dirtyRanges } from '../lab/dirty.js';
import { errorLines, vircpt } from '../lab/cli.js';
import { imageToRaw } from '../lab/images.js';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { remoteLab } from '../lab/remote.js';
import { requireTools, run } from '../lab/tools.js';

const MiB = 1024 * 1024;
const lab = remoteLab();
const BASE = 30000 + (process.pid % 1000) * 8;

describe('vircpt through qemu+ssh, NBD over TLS', () => {
  const labVms = new Lab('rcli');
  let vm: LabVm;
  let tmp: string;
  let scratch: string;
  let ref: Buffer;
  const writes: Array<[number, number]> = [[1 * MiB, 2 * MiB], [9 * MiB, 4096]];
  const cli = (...args: string[]) => vircpt(['-U', lab.sshUri, '-d', vm.name, '--nbd-tls', 'require', '--nbd-certs', lab.nbdCerts,
    '--nbd-ports', `${BASE}-${BASE + 7}`, '--scratchdir', scratch, ...args]);

  before(async () => {
    await requireTools('nbdinfo', 'nbdcopy', 'qemu-img');
    tmp = await mkdtemp('/var/tmp/vircptfs-rcli-');
    scratch = await mkdtemp('/var/tmp/vircptfs-rcli-scratch-');
    await chmod(scratch, 0o1777);
    vm = await labVms.vm({ disks: [{ target: 'sda', bus: 'sata', size: 16 * MiB }] });
    await vm.write('sda', 0, 4 * MiB, 0x11);
    await virsh('checkpoint-create-as', vm.name, 'c1');
    for (const [o, n] of writes) await vm.write('sda', o, n, 0x77);
    await imageToRaw(vm.image('sda'), path.join(tmp, 'ref.raw'));
    ref = await readFile(path.join(tmp, 'ref.raw'));
  });
  after(async () => {
    await labVms.cleanup();
    await rm(tmp, { recursive: true, force: true });
    await rm(scratch, { recursive: true, force: true });
  });

  it('map and copy start and end their own remote export', async () => {
    const map = await cli('map', '--name', 'c1', '--json');
    assert.equal(map.code, 0, map.stderr);
    const extents = (JSON.parse(map.stdout) as { disks: Record<string, { extents: Array<{ offset: number; length: number; type: number }> }> }).disks.sda!.extents;
    assert.deepEqual(extents.filter((e) => e.type === 1).map((e) => [e.offset, e.length]), dirtyRanges(writes));
    const out = path.join(tmp, 'copy');
    const copy = await cli('copy', '--name', 'c1', '--out', out);
    assert.equal(copy.code, 0, copy.stderr);
    assert.ok((await readFile(path.join(out, 'sda.raw'))).equals(ref), 'vircpt copy over TLS is byte-exact');
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual(await readdir(scratch), []);
  });

  it('export prints nbds:// URIs and commands that work as printed; release ends it', async () => {
    const exp = await cli('export', '--name', 'c1', '--json');
    assert.equal(exp.code, 0, exp.stderr);
    const rec = JSON.parse(exp.stdout) as ExportRecord;
    try {
      assert.equal(rec.remote?.tls, true);
      const text = await cli('info');
      assert.equal(text.code, 0, text.stderr);
      const uri = `nbds://localhost:${rec.remote!.port}/sda?tls-certificates=${lab.nbdCerts}`;
      assert.ok(text.stdout.includes(uri), text.stdout);
      // The commands `vircpt export` prints (its text form), run as printed.
      const { describeExport } = await import('../../src/cli/commands/export.js');
      const printed = describeExport(rec, 'c1', '').split('\n').filter((l) => /^ {2}(nbdinfo|nbdcopy|qemu-img)/.test(l));
      assert.equal(printed.length, 4, printed.join('\n'));
      for (const line of printed) {
        await run('bash', ['-c', `cd ${tmp} && ${line.trim()}`]);
        if (!/^\s*(nbdcopy|qemu-img)/.test(line)) continue;
        assert.ok((await readFile(path.join(tmp, 'sda.raw'))).equals(ref), `as printed, byte-exact: ${line.trim()}`);
        await rm(path.join(tmp, 'sda.raw'));
      }
    } finally {
      const rel = await cli('release');
      assert.equal(rel.code, 0, rel.stderr);
    }
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual(await readdir(scratch), []);
  });

  it('a shut-off remote domain is refused in one line (its disks would need qemu-nbd on that host)', async () => {
    await vm.destroy();
    const r = await cli('map', '--name', 'c1');
    assert.equal(r.code, 1);
    assert.deepEqual(errorLines(r.stderr).length, 1, r.stderr);
    assert.match(r.stderr, /is shut off on the remote hypervisor .*qemu-nbd on that host/);
  });
});
