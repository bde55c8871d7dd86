// A running domain's files keep their export's point in time while open, move on to a new one
// after release (mtime too); a backup job vircptfs did not start makes opens fail with EBUSY and
// is left alone; a VM destroyed mid-read fails reads with EIO quickly, and the next open serves.
import assert from 'node:assert/strict';
import { chown, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { backupXml } from '../../src/libvirt/backup.js';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { requireTools, run } from '../lab/tools.js';
import {
  assertSameBytes, ATTR_TIMEOUT_MS, checkpoint, dirtyOf, KiB, MiB, reference, rejectsWith, waitReleased, type DirtyMapJson,
} from './helpers.js';

const IDLE_S = 1;
const EIO_DEADLINE_MS = 10_000;

describe('vircptfs point in time, foreign jobs, a VM that dies', () => {
  const lab = new Lab('fspit');
  let vm: LabVm;
  let m: FsMount;
  let tmp: string;
  let before0: Buffer; // the disk as the checkpoint left it
  let after1: Buffer; // after the writes made while the first export was open
  const disk = () => m.path(vm.name, 'p1', 'sda.raw');
  const map = async () => JSON.parse(await readFile(m.path(vm.name, 'p1', 'dirty-map.json'), 'utf8')) as DirtyMapJson;

  before(async () => {
    await requireTools('nbdinfo');
    tmp = await mkdtemp('/var/tmp/vircptfs-fspit-');
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 64 * MiB }] });
    await vm.write('sda', 0, 8 * MiB, 0x10);
    await checkpoint(vm, 'p1');
    before0 = await reference(vm, 'sda', tmp, '-0');
    m = await mountFs({ options: [`domain=${vm.name}`, `idle=${IDLE_S}`] });
  });
  after(async () => {
    await m?.cleanup();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('keeps the point in time while a file is open; a new export after release shows new data and a new mtime', async () => {
    const created = (await stat(disk())).mtimeMs; // the checkpoint's creation, before any export
    const fh = await open(disk());
    await sleep(ATTR_TIMEOUT_MS); // the kernel keeps the attributes it saw before the open that long
    const first = (await fh.stat()).mtimeMs;
    assert.ok(first >= created, 'mtime is the export start once open');
    assertSameBytes((await fh.read(Buffer.alloc(MiB), 0, MiB, 0)).buffer, before0.subarray(0, MiB), 'first read');

    // Guest writes after the export began: over what was read, and over what was not.
    await vm.write('sda', 0, 64 * KiB, 0x5b);
    await vm.write('sda', 4 * MiB, 1 * MiB, 0x5a);
    after1 = await reference(vm, 'sda', tmp, '-1');
    assert.ok(!after1.equals(before0));

    assertSameBytes((await fh.read(Buffer.alloc(MiB), 0, MiB, 4 * MiB)).buffer, before0.subarray(4 * MiB, 5 * MiB), 'open fd');
    await using second = await open(disk());
    assertSameBytes(await second.readFile(), before0, 'a second open during the export');
    assert.equal((await stat(disk())).mtimeMs, first, 'stat shows the running export');
    const doc = await map();
    assert.equal(new Date(doc.exportedAt).getTime(), first);
    assert.deepEqual(dirtyOf(doc.disks.sda!.extents), [], 'nothing was dirty at the export\'s point in time');

    await fh.close();
    await second.close();
    await waitReleased(vm);
    await sleep(ATTR_TIMEOUT_MS);
    assert.equal((await stat(disk())).mtimeMs, created, 'without an export: the checkpoint\'s time again');

    await using third = await open(disk());
    await sleep(ATTR_TIMEOUT_MS);
    const next = (await third.stat()).mtimeMs;
    assert.ok(next > first, `a new export has a new mtime (${next} > ${first})`);
    assertSameBytes(await third.readFile(), after1, 'the new export serves the new data, no stale page');
    const doc2 = await map();
    assert.equal(new Date(doc2.exportedAt).getTime(), next);
    assert.deepEqual(dirtyOf(doc2.disks.sda!.extents), [[0, 64 * KiB], [4 * MiB, 1 * MiB]]);
    await third.close();
    await waitReleased(vm);
  });

  it('an open just as the idle release fires gets a working export', async () => {
    // Around the moment the idle timer stops the old export: the new start must wait for that
    // stop (same socket, same folders, one job per domain), not borrow or race it.
    for (const offsetMs of [-100, 0, 150]) {
      const fh = await open(disk());
      await fh.read(Buffer.alloc(4 * KiB), 0, 4 * KiB, 0);
      await fh.close();
      await sleep(IDLE_S * 1000 + offsetMs);
      await using again = await open(disk());
      const at = 8 * MiB + (offsetMs + 200) * 64 * KiB;
      assertSameBytes((await again.read(Buffer.alloc(MiB), 0, MiB, at)).buffer, after1.subarray(at, at + MiB), `reopen at idle${offsetMs} ms`);
      await again.close();
    }
    await waitReleased(vm);
  });

  it('refuses to open (EBUSY) while a backup job it did not start runs, and leaves that job alone', async (t) => {
    // QEMU (libvirt-qemu) creates the socket and the scratch file: a folder of its own.
    const dir = await mkdtemp('/var/tmp/vircptfs-foreign-');
    t.after(() => rm(dir, { recursive: true, force: true }));
    await chown(dir, Number(await run('id', ['-u', 'libvirt-qemu'])), 0);
    const sock = path.join(dir, 'foreign.sock');
    const xml = path.join(dir, 'backup.xml');
    await writeFile(xml, backupXml({ socket: sock, disks: [{ target: 'sda', scratch: `${dir}/sda.scratch.qcow2` }], skip: [] }));
    await virsh('backup-begin', vm.name, xml);
    try {
      await rejectsWith(open(disk()), 'EBUSY', 'open during a foreign job');
      await rejectsWith(readFile(m.path(vm.name, 'p1', 'dirty-map.json')), 'EBUSY', 'dirty map during a foreign job');
      assert.equal((await stat(disk())).size, 64 * MiB, 'stat still works');
      assert.equal(await vm.jobType(), 'Unbounded', 'the foreign job still runs');
      assert.match(await run('nbdinfo', ['--list', `nbd+unix:///?socket=${sock}`]), /export="sda"/);
      assert.deepEqual(await leftoversOf(vm.name), [], 'nothing of ours was made');
    } finally {
      await virsh('domjobabort', vm.name);
    }
    assertSameBytes(await readFile(disk()), after1, 'opens work again once the foreign job ended');
    await waitReleased(vm);
  });

  it('fails reads with EIO within seconds when the VM is destroyed mid-read; the next open serves again', async () => {
    const old = await open(disk());
    try {
      assertSameBytes((await old.read(Buffer.alloc(64 * KiB), 0, 64 * KiB, 0)).buffer, after1.subarray(0, 64 * KiB), 'before');
      await vm.destroy(); // returns once QEMU is gone
      const t0 = Date.now();
      let failure: NodeJS.ErrnoException | undefined;
      let served = 0;
      // Offsets never read before: neither the page cache nor the block cache holds them.
      for (let off = 2 * MiB; off < 64 * MiB && !failure; off += 2 * MiB + 4 * KiB) {
        failure = await old.read(Buffer.alloc(4 * KiB), 0, 4 * KiB, off).then(() => void served++, (e: NodeJS.ErrnoException) => e);
        assert.ok(Date.now() - t0 < EIO_DEADLINE_MS, 'reads keep succeeding after the VM died');
      }
      const took = Date.now() - t0;
      assert.equal(failure?.code, 'EIO', `read after destroy: ${failure?.message ?? 'no failure'}`);
      assert.ok(took < EIO_DEADLINE_MS, `EIO after ${took} ms`);
      console.log(`# first EIO ${took} ms after virsh destroy returned (${served} reads served before it)`);
      await rejectsWith(old.read(Buffer.alloc(4 * KiB), 0, 4 * KiB, 63 * MiB), 'EIO', 'later reads');

      await vm.start();
      // The dead export's file is still open: a new open must start afresh anyway.
      await using fresh = await open(disk());
      assertSameBytes(await fresh.readFile(), after1, 'after restart');
      await old.close();
      // Closing the dead export's last file must not end the new one.
      await sleep((IDLE_S + 1.5) * 1000);
      assert.equal(await vm.jobType(), 'Unbounded', 'the new export still runs while a file is open');
      assertSameBytes((await fresh.read(Buffer.alloc(MiB), 0, MiB, 40 * MiB)).buffer, after1.subarray(40 * MiB, 41 * MiB), 'still served');
      await fresh.close();
      await waitReleased(vm);
    } finally {
      await old.close().catch(() => {});
    }
  });

  it('leaves nothing behind after SIGTERM', async () => {
    const exit = await m.stop('SIGTERM');
    assert.deepEqual(exit, { code: 0, signal: null }, m.stderr);
    assert.deepEqual(await leftoversOf(vm.name), []);
    assert.equal(await vm.jobType(), 'None');
  });
});
