// Faults around a running export, produced for real in the lab, each with what a user should see:
// the export's socket file removed, its checkpoint deleted, its domain undefined while files are
// open, and a scratch folder that is missing or cannot be written.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, open, readdir, readFile, rm, rmdir, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { run } from '../lab/tools.js';
import { assertSameBytes, checkpoint, MiB, reference, rejectsWith, waitReleased } from './helpers.js';

const DISK = 16 * MiB;

async function until(what: string, cond: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting: ${what}`);
    await sleep(50);
  }
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await fh.read(buf, 0, length, offset);
  return buf.subarray(0, bytesRead);
}

describe('vircptfs faults around a running export', () => {
  const lab = new Lab('xfaults');
  let tmp: string;

  before(async () => { tmp = await mkdtemp('/var/tmp/vircptfs-xfaults-'); });
  after(async () => {
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  /** A running VM with two disks, checkpoint c1, and guest writes after it; the references are at c1. */
  async function twoDiskVm(): Promise<{ vm: LabVm; refs: Record<string, Buffer> }> {
    const vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: DISK }, { target: 'sdb', bus: 'sata', size: DISK }] });
    await vm.write('sda', 0, 4 * MiB, 0x31);
    await vm.write('sdb', 0, 4 * MiB, 0x32);
    await checkpoint(vm, 'c1');
    const refs = { sda: await reference(vm, 'sda', tmp), sdb: await reference(vm, 'sdb', tmp) };
    return { vm, refs };
  }

  /** twoDiskVm mounted, its sda at c1 open and its first MiB read right: where each fault begins. */
  async function readingSda(t: TestContext) {
    const { vm, refs } = await twoDiskVm();
    const m: FsMount = await mountFs({ options: [`domain=${vm.name}`, 'idle=1', 'nofreeze'] });
    t.after(() => m.cleanup());
    const fh = await open(m.path(vm.name, 'c1', 'sda.raw'), 'r');
    try {
      assertSameBytes(await readAt(fh, 0, MiB), refs.sda!.subarray(0, MiB), 'sda before');
    } catch (err) {
      await fh.close();
      throw err;
    }
    return { vm, refs, m, fh };
  }

  it('the export\'s socket file removed: open files keep reading, a new connection fails with EIO, release still cleans up', async (t) => {
    const { vm, refs, m, fh } = await readingSda(t);
    try {
      const socket = (await leftoversOf(vm.name)).find((p) => p.endsWith('.sock'));
      assert.ok(socket, 'the export has a socket');
      await rm(socket);
      // Never read before: these bytes come over the open connection, not from a cache.
      assertSameBytes(await readAt(fh, 8 * MiB, 8 * MiB), refs.sda!.subarray(8 * MiB), 'sda after the socket went');
      // sdb was not opened yet: its NBD connection is new, and has nowhere to go.
      await rejectsWith(open(m.path(vm.name, 'c1', 'sdb.raw'), 'r'), 'EIO', 'a new connection to the export');
      // The log says why (written once the reply is out, so waited for).
      await until('a log line naming the missing socket', async () => /ENOENT.*nbd\.sock/.test(m.stderr), 5000)
        .catch((err: Error) => assert.fail(`${err.message}; the log:\n${m.stderr}`));
      assertSameBytes(await readAt(fh, MiB, MiB), refs.sda!.subarray(MiB, 2 * MiB), 'sda after the failed open');
    } finally {
      await fh.close();
    }
    await waitReleased(vm);
    assert.ok(!m.gone, 'the daemon lives');
    // The next open starts a new export with a socket of its own.
    assertSameBytes(await readFile(m.path(vm.name, 'c1', 'sdb.raw')), refs.sdb!, 'sdb on a new export');
    assert.deepEqual(await m.stop('SIGTERM'), { code: 0, signal: null }, m.stderr);
    assert.deepEqual(await leftoversOf(vm.name), [], 'nothing left behind');
    assert.equal(await vm.jobType(), 'None');
  });

  it('the checkpoint deleted while its files are open: reads go on at its point in time, the directory leaves the listing, a new open gets ENOENT', async (t) => {
    const { vm, refs, m, fh } = await readingSda(t);
    try {
      await virsh('checkpoint-delete', vm.name, 'c1');
      // The guest writes on; the export stays at its point in time.
      await vm.write('sda', 8 * MiB, 4 * MiB, 0x77);
      await until('c1 leaves the listing', async () => !(await readdir(m.path(vm.name))).includes('c1'));
      await rejectsWith(open(m.path(vm.name, 'c1', 'sdb.raw'), 'r'), 'ENOENT', 'a new open of the deleted checkpoint');
      await rejectsWith(open(m.path(vm.name, 'c1', 'sda.raw'), 'r'), 'ENOENT', 'a new open of the open file');
      assertSameBytes(await readAt(fh, MiB, DISK - MiB), refs.sda!.subarray(MiB), 'sda after the delete: still at c1');
    } finally {
      await fh.close();
    }
    await waitReleased(vm);
    assert.deepEqual(await m.stop('SIGTERM'), { code: 0, signal: null }, m.stderr);
    assert.deepEqual(await leftoversOf(vm.name), [], 'nothing left behind');
  });

  it('a running domain undefined while mounted: it runs on as a transient domain, files keep working, it leaves the tree once destroyed', async (t) => {
    const { vm, refs, m, fh } = await readingSda(t);
    try {
      // libvirt undefines a domain with checkpoints only together with their metadata.
      await virsh('undefine', '--checkpoints-metadata', vm.name);
      assert.equal(await vm.state(), 'paused', 'it runs on (transient)');
      assertSameBytes(await readAt(fh, MiB, DISK - MiB), refs.sda!.subarray(MiB), 'sda after the undefine');
      assert.ok((await readdir(m.dir)).includes(vm.name), 'a transient domain is still listed');
      await vm.destroy();
      await until('the destroyed transient domain leaves the tree', async () => !(await readdir(m.dir)).includes(vm.name));
      await rejectsWith(readAt(fh, 2 * MiB, 4096), 'EIO', 'a read once the domain is gone');
    } finally {
      await fh.close();
    }
    await until('our folders are removed', async () => (await leftoversOf(vm.name)).length === 0);
    assert.ok(!m.gone, 'the daemon lives');
    assert.deepEqual(await m.stop('SIGTERM'), { code: 0, signal: null }, m.stderr);
  });

  /** An open with `scratch=` at `dir` fails with EIO, the log names the folder, and no job or folder is left. */
  async function openFailsCleanly(t: { after: (f: () => Promise<void>) => void }, dir: string, why: RegExp): Promise<void> {
    const { vm } = await twoDiskVm();
    const m: FsMount = await mountFs({ options: [`domain=${vm.name}`, `scratch=${dir}`, 'idle=1', 'nofreeze'] });
    t.after(() => m.cleanup());
    await rejectsWith(open(m.path(vm.name, 'c1', 'sda.raw'), 'r'), 'EIO', 'an open that needs a scratch file');
    assert.match(m.stderr, why);
    assert.equal(await vm.jobType(), 'None', 'no half-started job');
    assert.deepEqual(await leftoversOf(vm.name), [], 'no folder left');
    assert.deepEqual(await m.stop('SIGTERM'), { code: 0, signal: null }, m.stderr);
  }

  it('the scratch folder missing: the open fails with EIO and a log line naming it, no job is started', async (t) => {
    const dir = path.join(tmp, 'no-such-scratch');
    await openFailsCleanly(t, dir, new RegExp(`scratch folder ${dir} does not exist`));
    await assert.rejects(readdir(dir), 'the missing folder is not made (it may be a filesystem not mounted yet)');
  });

  it('the scratch folder unwritable (a read-only filesystem): the open fails with EIO and a log line naming it, no job is started', async (t) => {
    const dir = path.join(tmp, 'ro-scratch');
    await mkdir(dir, { mode: 0o755 });
    await run('mount', ['-t', 'tmpfs', '-o', 'ro,size=1M,mode=0755', 'vircptfs-ro-scratch', dir]);
    t.after(async () => {
      if ((await execa('umount', [dir], { reject: false })).exitCode !== 0) await execa('umount', ['-l', dir], { reject: false });
      await rmdir(dir).catch(() => {});
    });
    await openFailsCleanly(t, dir, new RegExp(`${dir}.*(read-only|EROFS)`, 'i'));
  });
});
