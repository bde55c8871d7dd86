// vircpt map / info / copy against a lab VM's pull-mode export, compared with the C tools.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { errorLines, vircpt } from '../lab/cli.js';
import { imageToRaw } from '../lab/images.js';
import { leftoversOf } from '../lab/leftovers.js';
import { requireTools, run } from '../lab/tools.js';
import type { ExportRecord } from '../../src/exports/export.js';
import { nbdUri } from '../../src/exports/export.js';
import { backupXml } from '../../src/libvirt/backup.js';

const MiB = 1024 * 1024;
const KiB = 1024;

interface MapDoc { disks: Record<string, { size: number; extents: { offset: number; length: number; type: number; description: string }[] }> }

describe('vircpt map, info and copy', () => {
  const lab = new Lab('mapcopy');
  let vm: LabVm;
  let tmp: string;
  const cli = (...args: string[]) => vircpt(['-d', vm.name, ...args]);

  before(async () => {
    await requireTools('nbdinfo', 'nbdcopy');
    tmp = await mkdtemp('/var/tmp/vircptfs-test-');
    // vdb ends 512 bytes past a page: copy writes its tail through the page cache, the rest
    // with O_DIRECT (src/copy/sparse-copy.ts), and both must land.
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 96 * MiB }, { target: 'vdb', size: 32 * MiB + 512 }] });
    await vm.write('sda', 0, 8 * MiB, 0x22);
    await vm.write('vdb', 4 * MiB, 4 * MiB, 0x33);
    assert.equal((await cli('create', '--name', 'c1')).code, 0);
    await vm.write('sda', 3 * MiB, 128 * KiB, 0xab);
    await vm.write('sda', 40 * MiB + 64 * KiB, 64 * KiB, 0xac);
    await vm.write('vdb', 31 * MiB, 1 * MiB + 512, 0xad);
  });
  after(async () => {
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('map shows exactly the written ranges dirty, covering each disk, and leaves nothing behind', async () => {
    const r = await cli('map', '--name', 'c1', '--json');
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as MapDoc;
    const dirty = (t: string) => doc.disks[t]!.extents.filter((e) => e.type === 1).map((e) => [e.offset, e.length]);
    assert.deepEqual(dirty('sda'), [[3 * MiB, 128 * KiB], [40 * MiB + 64 * KiB, 64 * KiB]]);
    assert.deepEqual(dirty('vdb'), [[31 * MiB, 1 * MiB + 512]]);
    for (const [t, d] of Object.entries(doc.disks)) {
      let pos = 0;
      for (const e of d.extents) {
        assert.equal(e.offset, pos, `${t}: no gap or overlap`);
        pos += e.length;
      }
      assert.equal(pos, d.size, `${t}: covers the disk`);
    }
    assert.equal(await vm.jobType(), 'None', 'its own export was released');
    assert.deepEqual(await leftoversOf(vm.name), []);
  });

  it('map --base matches nbdinfo --map on the same export; info describes it; both leave it running', async () => {
    const ex = await cli('export', '--name', 'c1', '--json');
    assert.equal(ex.code, 0, ex.stderr);
    try {
      const rec = JSON.parse(ex.stdout) as ExportRecord;
      const r = await cli('map', '--name', 'c1', '--base', '--json');
      assert.equal(r.code, 0, r.stderr);
      const ours = (JSON.parse(r.stdout) as MapDoc).disks.sda!.extents;
      const theirs = JSON.parse(await run('nbdinfo', ['--map', '--json', nbdUri(rec.disks[0]!)])) as MapDoc['disks'][string]['extents'];
      assert.deepEqual(ours, theirs);
      const info = await cli('info', '--json');
      assert.equal(info.code, 0, info.stderr);
      const doc = JSON.parse(info.stdout) as { owner: string; disks: { target: string; size: number; contexts: string[]; canMultiConn: boolean }[] };
      assert.equal(doc.owner, 'export');
      assert.deepEqual(doc.disks.map((d) => [d.target, d.size]), [['sda', 96 * MiB], ['vdb', 32 * MiB + 512]]);
      assert.ok(doc.disks[0]!.contexts.includes('qemu:dirty-bitmap:backup-sda'));
      assert.equal(await vm.jobType(), 'Unbounded', 'map and info left the running export alone');
    } finally {
      assert.equal((await cli('release')).code, 0);
    }
    const none = await cli('info');
    assert.equal(none.code, 1);
    assert.match(errorLines(none.stderr)[0]!, /has no running export/);
  });

  it('copy writes byte-identical, sparse raw files and releases its export', async () => {
    const out = path.join(tmp, 'copy');
    const r = await cli('copy', '--name', 'c1', '--out', out);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /MaxListeners|Warning/, 'the reads in flight share one listener on the Ctrl-C signal');
    for (const t of ['sda', 'vdb']) {
      const ref = path.join(tmp, `${t}.ref`);
      await imageToRaw(vm.image(t), ref);
      const [a, b] = await Promise.all([readFile(path.join(out, `${t}.raw`)), readFile(ref)]);
      assert.ok(a.equals(b), `${t}.raw is the disk`);
      const st = await stat(path.join(out, `${t}.raw`));
      assert.ok(st.blocks * 512 < st.size / 4, `${t}.raw is sparse (${st.blocks * 512} of ${st.size} bytes allocated)`);
    }
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual(await leftoversOf(vm.name), []);
    const again = await cli('copy', '--name', 'c1', '--out', out);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already exists; not overwriting it/);
  });

  it('copy refuses at once, in one line, while a backup job it did not start runs, and leaves that job alone', async () => {
    const jobDir = await mkdtemp('/var/tmp/vircptfs-test-foreign-');
    try {
      await run('chown', ['libvirt-qemu', jobDir]);
      const sock = path.join(jobDir, 'foreign.sock');
      const file = path.join(jobDir, 'foreign.xml');
      await writeFile(file, backupXml({ socket: sock, disks: [{ target: 'sda', scratch: path.join(jobDir, 'sda.qcow2') }], skip: ['vdb'] }));
      await virsh('backup-begin', vm.name, file);
      try {
        const started = Date.now();
        const r = await cli('copy', '--name', 'c1', '--out', path.join(tmp, 'foreign'));
        // The job check comes before backup-begin, which would wait 30 s for libvirt's job lock.
        assert.ok(Date.now() - started < 20_000, `refused after ${Date.now() - started} ms`);
        assert.equal(r.code, 1);
        assert.deepEqual(errorLines(r.stderr), [`vircpt: domain ${vm.name} has a running Backup job that vircptfs did not start; it is left alone`]);
        assert.equal(await vm.jobType(), 'Unbounded', 'the foreign job still runs');
        assert.match(await run('nbdinfo', ['--list', `nbd+unix:///?socket=${sock}`]), /export="sda"/);
        assert.deepEqual(await leftoversOf(vm.name), []);
      } finally {
        await virsh('domjobabort', vm.name);
      }
    } finally {
      await rm(jobDir, { recursive: true, force: true });
    }
  });

  it('copy and map read through a running export: -i/-x select its disks, unknown names are one line', async () => {
    const ex = await cli('export', '--name', 'c1');
    assert.equal(ex.code, 0, ex.stderr);
    try {
      const out = path.join(tmp, 'through');
      const r = await cli('copy', '--name', 'c1', '--out', out);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '', 'no warning');
      assert.deepEqual((await readdir(out)).sort(), ['sda.raw', 'vdb.raw']);
      const ref = path.join(tmp, 'vdb.through.ref');
      await imageToRaw(vm.image('vdb'), ref);
      assert.ok((await readFile(path.join(out, 'vdb.raw'))).equals(await readFile(ref)), 'vdb.raw is the disk');

      const only = await cli('-i', 'vdb', 'map', '--name', 'c1', '--json');
      assert.equal(only.code, 0, only.stderr);
      assert.deepEqual(Object.keys((JSON.parse(only.stdout) as MapDoc).disks), ['vdb']);
      const but = await cli('-x', 'vdb', 'map', '--name', 'c1', '--json');
      assert.equal(but.code, 0, but.stderr);
      assert.deepEqual(Object.keys((JSON.parse(but.stdout) as MapDoc).disks), ['sda']);

      const nocp = await cli('copy', '--name', 'nosuch', '--out', path.join(tmp, 'nosuch'));
      assert.equal(nocp.code, 1);
      assert.deepEqual(errorLines(nocp.stderr), [`vircpt: domain ${vm.name} has no checkpoint nosuch`]);
      const nodisk = await cli('-i', 'sdz', 'map', '--name', 'c1');
      assert.equal(nodisk.code, 1);
      assert.deepEqual(errorLines(nodisk.stderr), [`vircpt: domain ${vm.name} has no disk sdz (disks: sda, vdb)`]);
      assert.equal(await vm.jobType(), 'Unbounded', 'the running export was left alone');
    } finally {
      assert.equal((await cli('release')).code, 0);
    }
  });
});
