// vircpt export / release, for a running domain (pull-mode backup job) and a shut-off one
// (qemu-nbd), checked with the C tools: nbdinfo and nbdcopy.
import assert from 'node:assert/strict';
import { readdir, readFile, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { errorLines, vircpt } from '../lab/cli.js';
import { imageToRaw } from '../lab/images.js';
import { leftoversOf } from '../lab/leftovers.js';
import { requireTools, run } from '../lab/tools.js';
import type { ExportRecord } from '../../src/exports/export.js';
import { nbdUri } from '../../src/exports/export.js';
import { defaultRuntimeDirs, domainDirName, processStartTime } from '../../src/exports/runtime.js';
import { backupXml } from '../../src/libvirt/backup.js';
import { asUser } from '../lab/users.js';

const MiB = 1024 * 1024;

interface MapEntry { offset: number; length: number; type: number; description: string }

async function dirtyMap(uri: string, context: string): Promise<MapEntry[]> {
  return JSON.parse(await run('nbdinfo', [`--map=${context}`, '--json', uri])) as MapEntry[];
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([readFile(a), readFile(b)]);
  return x.equals(y);
}

describe('vircpt export and release', () => {
  const lab = new Lab('export');
  let vm: LabVm;
  let tmp: string;
  const cli = (...args: string[]) => vircpt(['-d', vm.name, ...args]);

  before(async () => {
    await requireTools('nbdinfo', 'nbdcopy', 'qemu-nbd');
    tmp = await mkdtemp('/var/tmp/vircptfs-test-');
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 64 * MiB }, { target: 'vdb', size: 32 * MiB }] });
    await vm.write('sda', 0, 4 * MiB, 0x11); // before the checkpoint: data, but clean
    assert.equal((await cli('create', '--name', 'base')).code, 0);
    await vm.write('sda', 1 * MiB, 2 * MiB, 0xab);
    await vm.write('vdb', 8 * MiB, 64 * 1024, 0xcd);
  });
  after(async () => {
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('exports a running domain: URIs work with nbdinfo and nbdcopy, dirty map is exact', async (t) => {
    const r = await cli('export', '--name', 'base', '--json');
    assert.equal(r.code, 0, r.stderr);
    t.after(() => cli('release'));
    const rec = JSON.parse(r.stdout) as ExportRecord;
    assert.equal(rec.kind, 'backup');
    assert.deepEqual(rec.disks.map((d) => d.target), ['sda', 'vdb']);
    const list = await run('nbdinfo', ['--list', `nbd+unix:///?socket=${rec.disks[0]!.socket}`]);
    for (const t of ['sda', 'vdb']) {
      assert.match(list, new RegExp(`export="${t}"`));
      assert.match(list, new RegExp(`qemu:dirty-bitmap:backup-${t}`));
    }
    const sda = rec.disks[0]!;
    assert.deepEqual(await dirtyMap(nbdUri(sda), sda.dirtyContexts.base!), [
      { offset: 0, length: 1 * MiB, type: 0, description: 'clean' },
      { offset: 1 * MiB, length: 2 * MiB, type: 1, description: 'dirty' },
      { offset: 3 * MiB, length: 61 * MiB, type: 0, description: 'clean' },
    ]);
    const vdb = rec.disks[1]!;
    const vdbDirty = (await dirtyMap(nbdUri(vdb), vdb.dirtyContexts.base!)).filter((e) => e.type === 1);
    assert.deepEqual(vdbDirty.map((e) => [e.offset, e.length]), [[8 * MiB, 64 * 1024]]);
    // The paused VM writes nothing: the export equals the image's current guest-visible bytes.
    await run('nbdcopy', [nbdUri(sda), path.join(tmp, 'sda.nbdcopy')]);
    await imageToRaw(vm.image('sda'), path.join(tmp, 'sda.image'));
    assert.ok(await sameBytes(path.join(tmp, 'sda.nbdcopy'), path.join(tmp, 'sda.image')), 'nbdcopy of the export == the disk');

    const human = await cli('export', '--name', 'base');
    assert.equal(human.code, 1, 'a second export of the same domain is refused');
    assert.match(human.stderr, /already exported/);

    const rel = await cli('release');
    assert.equal(rel.code, 0, rel.stderr);
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual(await leftoversOf(vm.name), [], 'no socket, scratch file or folder left');
  });

  it('prints the URIs and ready-to-run commands', async (t) => {
    const r = await cli('export', '--name', 'base');
    assert.equal(r.code, 0, r.stderr);
    t.after(() => cli('release'));
    assert.match(r.stdout, /sda: nbd\+unix:\/\/\/sda\?socket=\/\S+\.sock/);
    assert.match(r.stdout, /nbdinfo --list/);
    assert.match(r.stdout, /nbdcopy/);
    assert.match(r.stdout, /qemu-img create -f qcow2 -b/);
    // Who can connect, said and true: a local non-root user can reach neither the socket nor
    // the scratch file.
    const socket = /socket=(\/\S+\.sock)/.exec(r.stdout)![1]!;
    assert.match(r.stdout, new RegExp(`^Who can connect: root and libvirt-qemu only \\(${path.dirname(socket)} is mode 0700, owner libvirt-qemu\\)\\.$`, 'm'));
    const nbd = await asUser('nobody', 'nbdinfo', [`nbd+unix:///sda?socket=${socket}`]);
    assert.notEqual(nbd.code, 0, `nobody connected: ${nbd.stdout}`);
    assert.match(nbd.stderr, /Permission denied/);
    const scratchDir = path.join(defaultRuntimeDirs().scratchRoot, 'export', domainDirName(vm.name));
    const scratch = await readdir(scratchDir);
    assert.ok(scratch.length > 0, 'a scratch file');
    for (const f of scratch) assert.match((await asUser('nobody', 'cat', [path.join(scratchDir, f)])).stderr, /Permission denied/);
    assert.equal((await cli('release')).code, 0);
    assert.deepEqual(await leftoversOf(vm.name), []);
  });

  it('never touches a backup job it did not start', async () => {
    const sock = path.join(tmp, 'foreign.sock');
    await execa('chown', ['libvirt-qemu', tmp]);
    const xml = backupXml({ socket: sock, disks: [{ target: 'sda', scratch: `${tmp}/foreign-sda.qcow2` }], skip: ['vdb'] });
    const file = path.join(tmp, 'foreign.xml');
    await import('node:fs/promises').then((fs) => fs.writeFile(file, xml));
    await virsh('backup-begin', vm.name, file);
    try {
      const ex = await cli('export', '--name', 'base');
      assert.equal(ex.code, 1);
      assert.equal(errorLines(ex.stderr).length, 1, ex.stderr);
      assert.match(ex.stderr, /running Backup job that vircptfs did not start/);
      const rel = await cli('release');
      assert.equal(rel.code, 1);
      assert.match(rel.stderr, /did not start; refusing to abort it/);
      assert.equal(await vm.jobType(), 'Unbounded', 'the foreign job still runs');
      assert.match(await run('nbdinfo', ['--list', `nbd+unix:///?socket=${sock}`]), /export="sda"/);
    } finally {
      await virsh('domjobabort', vm.name);
    }
  });

  it('serves a shut-off domain with qemu-nbd; create and merge-delete are refused', async () => {
    await vm.destroy();
    const cr = await cli('create', '--name', 'later');
    assert.equal(cr.code, 1);
    assert.match(cr.stderr, /is shut off: libvirt creates checkpoints only on a running domain/);
    const del = await cli('delete', '--name', 'base');
    assert.equal(del.code, 1);
    assert.match(del.stderr, /is shut off: .*use --metadata/);

    const r = await cli('export', '--name', 'base', '--json');
    assert.equal(r.code, 0, r.stderr);
    const rec = JSON.parse(r.stdout) as ExportRecord;
    assert.equal(rec.kind, 'qemu-nbd');
    const sda = rec.disks[0]!;
    assert.equal(sda.dirtyContexts.base, 'qemu:dirty-bitmap:base');
    const pid = Number((await readFile(sda.pidFile!, 'utf8')).trim());
    const nbd = await asUser('nobody', 'nbdinfo', [nbdUri(sda)]);
    assert.notEqual(nbd.code, 0, `nobody connected to qemu-nbd: ${nbd.stdout}`);
    assert.match(nbd.stderr, /Permission denied/);
    assert.match(await run('nbdinfo', ['--list', nbdUri(sda)]), /qemu:dirty-bitmap:base/);
    const dirty = (await dirtyMap(nbdUri(sda), 'qemu:dirty-bitmap:base')).filter((e) => e.type === 1);
    assert.deepEqual(dirty.map((e) => [e.offset, e.length]), [[1 * MiB, 2 * MiB]]);
    await run('nbdcopy', [nbdUri(sda), path.join(tmp, 'off.nbdcopy')]);
    await imageToRaw(vm.image('sda'), path.join(tmp, 'off.image'));
    assert.ok(await sameBytes(path.join(tmp, 'off.nbdcopy'), path.join(tmp, 'off.image')));

    const start = await execa('virsh', ['-c', 'qemu:///system', 'start', '--paused', vm.name], { reject: false });
    assert.notEqual(start.exitCode, 0, 'the VM cannot start while qemu-nbd holds its images');
    assert.match(String(start.stderr), /lock/);

    assert.equal((await cli('release')).code, 0);
    assert.equal(processStartTime(pid), undefined, 'qemu-nbd is gone');
    assert.deepEqual(await leftoversOf(vm.name), []);
  });
});
