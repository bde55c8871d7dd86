// The guest comes first: with the scratch files on a small filesystem (a 16 MiB tmpfs) and guest
// writes in 1 MiB steps, the scratch guard gives the export up before space runs out, so no
// guest write fails and all of them reach the disk; readers get EIO, the log says why, and while
// the filesystem is below the reserve no export starts (ENOSPC). Serial: it fills a filesystem.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rm, rmdir, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { vircpt } from '../lab/cli.js';
import { Lab, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { mountFs } from '../lab/mount.js';
import { requireTools, run } from '../lab/tools.js';
import type { ExportRecord } from '../../src/exports/export.js';
import { processStartTime } from '../../src/exports/runtime.js';
import { assertSameBytes, checkpoint, MiB, reference, rejectsWith, waitReleased } from '../fs/helpers.js';

const TMPFS_SIZE = 16 * MiB;
const RESERVE = 6 * MiB;
const DISK = 64 * MiB;
/** Guest data before the checkpoint: copy-before-write copies real blocks, not holes. */
const FILLED = 40 * MiB;
/** More than the tmpfs holds: without the guard, the guest's writes would fail. */
const STEPS = 24;

async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting: ${what}`);
    await sleep(50);
  }
}

describe('scratch guard: the guest first', () => {
  const lab = new Lab('guard');
  let vm: LabVm;
  let tmp: string;
  /** The tmpfs: the scratch root of every export here. */
  let scratch: string;
  /** The guest-visible disk as the writes so far made it. */
  const expected = Buffer.alloc(DISK);
  let pattern = 0x10;

  /**
   * Guest writes of 1 MiB from offset 0, paced as the guard's reserve assumes: a step that leaves
   * less than the reserve free is followed by no other until the guard has ended the job. Then
   * the remaining steps go on without a job. Returns how long the guard took to react (0 when
   * the job was already gone, and its scratch image with it, by the time free space was looked
   * at: a quick guard on a loaded machine; nothing but the guard ends the job here).
   */
  async function pacedWrites(): Promise<{ firedAfter: number; reactMs: number }> {
    let firedAfter = -1;
    let reactMs = 0;
    for (let i = 0; i < STEPS; i++) {
      const p = pattern++ & 0xff;
      await vm.write('vda', i * MiB, MiB, p);
      expected.fill(p, i * MiB, (i + 1) * MiB);
      if (firedAfter >= 0) continue;
      if ((await freeBytes(scratch)) < RESERVE) {
        const t0 = Date.now();
        await until('the guard ends the backup job', async () => (await vm.jobType()) === 'None');
        reactMs = Date.now() - t0;
        firedAfter = i;
      } else if ((await vm.jobType()) === 'None') {
        firedAfter = i;
      }
    }
    assert.ok(firedAfter >= 0, 'the guard never ended the backup job');
    return { firedAfter, reactMs };
  }

  async function assertGuestWritesLanded(what: string): Promise<void> {
    const qemuLog = await readFile(`/var/log/libvirt/qemu/${vm.name}.log`, 'utf8');
    assert.doesNotMatch(qemuLog, /write failed/, `${what}: QEMU failed a guest write`);
    assertSameBytes(await reference(vm, 'vda', tmp, `-${pattern}`), expected, `${what}: the disk after the guest's writes`);
  }

  before(async () => {
    await requireTools('virsh', 'qemu-img', 'fusermount3');
    tmp = path.join('/var/tmp', `vircptfs-guard-${process.pid}-${randomBytes(3).toString('hex')}`);
    scratch = path.join(tmp, 'scratch');
    await mkdir(scratch, { recursive: true, mode: 0o755 });
    await run('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_SIZE},mode=0755`, 'vircptfs-guard', scratch]);
    vm = await lab.vm({ disks: [{ target: 'vda', size: DISK }] });
    await vm.write('vda', 0, FILLED, 0x5a);
    expected.fill(0x5a, 0, FILLED);
    await checkpoint(vm, 'c1');
  });
  after(async () => {
    await lab.cleanup();
    if ((await execa('umount', [scratch], { reject: false })).exitCode !== 0) await execa('umount', ['-l', scratch], { reject: false });
    await rmdir(scratch).catch(() => {});
    await rm(tmp, { recursive: true, force: true });
  });

  it('gives a mount\'s export up before the guest\'s writes could fail: readers get EIO, the log says why, the next open starts afresh', async (t) => {
    const m = await mountFs({ options: [`scratch=${scratch}`, `scratch_reserve=${RESERVE / MiB}M`, 'idle=1'] });
    t.after(() => m.cleanup());
    const file = m.path(vm.name, 'c1', 'vda.raw');
    const before = expected.subarray(0, MiB);
    const held = await open(file, 'r');
    try {
      assertSameBytes((await held.read(Buffer.alloc(MiB), 0, MiB, 0)).buffer, before, 'read before the writes');
      const { firedAfter, reactMs } = await pacedWrites();
      console.log(`# guard fired after ${firedAfter + 1} MiB of guest writes; job gone ${reactMs} ms after free space fell below the reserve`);
      await assertGuestWritesLanded('mount');
      // Never read before: neither the kernel's page cache nor the block cache has it.
      await rejectsWith(held.read(Buffer.alloc(4096), 0, 4096, 30 * MiB), 'EIO', 'a read of the given-up export');
      assert.match(m.stderr, new RegExp(`domain ${vm.name}: scratch space ran low.*used [0-9.]+ MiB of scratch.* MiB free in ${scratch}/`));
    } finally {
      await held.close();
    }
    // libvirt deleted the scratch image with the job: the next open starts a new export, now.
    const again = await readFile(file);
    assertSameBytes(again, expected, 'the next open: a new point in time');
    await waitReleased(vm);
    assert.deepEqual(await readdir(scratch), [], 'nothing left on the scratch filesystem');
  });

  it('refuses to start an export (ENOSPC) while the scratch filesystem is below the reserve, and starts once space is back', async (t) => {
    const m = await mountFs({ options: [`scratch=${scratch}`, `scratch_reserve=${RESERVE / MiB}M`, 'idle=1'] });
    t.after(() => m.cleanup());
    const file = m.path(vm.name, 'c1', 'vda.raw');
    const filler = path.join(scratch, 'filler');
    t.after(() => rm(filler, { force: true }));
    await writeFile(filler, Buffer.alloc((await freeBytes(scratch)) - RESERVE / 2, 1));
    assert.ok((await freeBytes(scratch)) < RESERVE);
    await rejectsWith(open(file, 'r'), 'ENOSPC', 'an open that would start an export');
    assert.match(m.stderr, new RegExp(`domain ${vm.name}: not starting an export: the scratch filesystem of ${scratch}/\\S+ has [0-9.]+ MiB free, below the scratch reserve of 6.0 MiB`));
    assert.equal(await vm.jobType(), 'None', 'no job was started');
    assert.deepEqual((await readdir(scratch)).sort(), ['filler'], 'no half-made export left');
    await rm(filler);
    assertSameBytes(await readFile(file), expected, 'once space is back, the open works');
    await waitReleased(vm);
  });

  const cli = (...args: string[]) => vircpt(['--scratchdir', scratch, '--scratch-reserve', `${RESERVE / MiB}M`, '-d', vm.name, ...args]);

  async function exportWithWatcher(): Promise<{ pid: number; startTime: string }> {
    const r = await cli('export', '--name', 'c1', '--json');
    assert.equal(r.code, 0, r.stderr);
    const guard = (JSON.parse(r.stdout) as ExportRecord).guard;
    assert.ok(guard, 'the record names the export\'s scratch guard');
    assert.equal(processStartTime(guard.pid), guard.startTime, 'the scratch guard runs');
    return guard;
  }

  it('vircpt export: its watcher process ends the job before the guest\'s writes could fail, then exits; release cleans up', async (t) => {
    t.after(() => cli('release'));
    const guard = await exportWithWatcher();
    const { firedAfter, reactMs } = await pacedWrites();
    console.log(`# watcher fired after ${firedAfter + 1} MiB of guest writes; job gone ${reactMs} ms after free space fell below the reserve`);
    await assertGuestWritesLanded('vircpt export');
    await until('the watcher exits once its job is gone', () => processStartTime(guard.pid) === undefined);
    const rel = await cli('release');
    assert.equal(rel.code, 0, rel.stderr);
    assert.match(rel.stdout, new RegExp(`scratch guard had already ended the backup job at .*domain ${vm.name}: scratch space ran low.*used [0-9.]+ MiB of scratch`));
    assert.deepEqual(await leftoversOf(vm.name), [], 'no record, socket or folder left');
    assert.deepEqual(await readdir(scratch), [], 'nothing left on the scratch filesystem');
  });

  it('vircpt release ends the export\'s watcher process', async (t) => {
    t.after(() => cli('release'));
    const guard = await exportWithWatcher();
    const rel = await cli('release');
    assert.equal(rel.code, 0, rel.stderr);
    assert.equal(processStartTime(guard.pid), undefined, 'the watcher is gone once release returns');
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual(await leftoversOf(vm.name), []);
  });
});
