// Faults under a mounted vircptfs, produced for real in the lab, each with what a user should
// see: the server behind an open file goes away (qemu-nbd killed, QEMU quits, the VM is
// destroyed): its reads fail with EIO within 5 s, and the next open starts a new export that
// reads the right bytes (a VM that ended is shut off now, so qemu-nbd serves it).
import assert from 'node:assert/strict';
import { mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { Lab, LAB_URI, virsh, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { assertSameBytes, checkpoint, MiB, reference } from './helpers.js';

const EIO_DEADLINE_MS = 5000;
const DISK = 16 * MiB;

/** Reads 4 KiB at offsets never read before until one fails; returns its code and the time taken. */
async function failsWithin(fh: FileHandle, deadlineMs: number): Promise<{ code: string; ms: number }> {
  const t0 = Date.now();
  const buf = Buffer.alloc(4096);
  // From the end backwards, one per 64 KiB: neither the page cache nor the block cache has them.
  for (let off = DISK - 4096; Date.now() - t0 < deadlineMs; off -= 64 * 1024) {
    assert.ok(off > 2 * MiB, 'ran out of unread offsets');
    const err = await fh.read(buf, 0, buf.length, off).then(() => undefined, (e: NodeJS.ErrnoException) => e);
    if (err) return { code: err.code ?? String(err), ms: Date.now() - t0 };
    await sleep(50);
  }
  return assert.fail(`reads still succeed ${deadlineMs} ms after the fault`);
}

describe('vircptfs faults: the server behind an open file goes away', () => {
  const lab = new Lab('faults');
  let tmp: string;

  before(async () => { tmp = await mkdtemp('/var/tmp/vircptfs-faults-'); });
  after(async () => {
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  /** A VM with a checkpoint and a guest write after it; running unless `off`. */
  async function vmWithData(off: boolean): Promise<{ vm: LabVm; ref: Buffer }> {
    const vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: DISK }] });
    await vm.write('sda', 0, 2 * MiB, 0x51);
    await checkpoint(vm, 'f1');
    await vm.write('sda', 4 * MiB, MiB, 0x52);
    if (off) await vm.destroy();
    return { vm, ref: await reference(vm, 'sda', tmp) };
  }

  /** Mounts, opens the disk, reads its start; runs the fault; checks EIO, then a new open. */
  async function scenario(off: boolean, fault: (vm: LabVm) => Promise<void>): Promise<void> {
    const { vm, ref } = await vmWithData(off);
    const m: FsMount = await mountFs({ options: [`domain=${vm.name}`, 'idle=60', 'nofreeze'] });
    let fh: FileHandle | undefined;
    try {
      const file = m.path(vm.name, 'f1', 'sda.raw');
      fh = await open(file, 'r');
      const head = Buffer.alloc(MiB);
      await fh.read(head, 0, MiB, 0);
      assertSameBytes(head, ref.subarray(0, MiB), 'before the fault');
      await fault(vm);
      const { code, ms } = await failsWithin(fh, EIO_DEADLINE_MS);
      console.log(`# reads failed with ${code} ${ms} ms after the fault`);
      assert.equal(code, 'EIO');
      await fh.close();
      fh = undefined;
      // The next open starts afresh: the domain is shut off now, so qemu-nbd serves it.
      assert.equal(await vm.state(), 'shut off');
      assertSameBytes(await readFile(file), ref, 'after a new open');
      assert.ok(!m.gone, 'the daemon lives');
      assert.deepEqual(await m.stop('SIGTERM'), { code: 0, signal: null }, m.stderr);
      assert.deepEqual(await leftoversOf(vm.name), [], 'nothing left behind');
    } finally {
      await fh?.close().catch(() => {});
      await m.cleanup();
    }
  }

  it('qemu-nbd killed (shut-off domain): EIO within 5 s, the next open works', async () => {
    await scenario(true, async (vm) => {
      const pidFile = (await leftoversOf(vm.name)).find((p) => p.endsWith('.pid'));
      assert.ok(pidFile, 'qemu-nbd serves the shut-off domain');
      process.kill(Number((await readFile(pidFile, 'utf8')).trim()), 'SIGKILL');
    });
  });

  it('QEMU quits (QMP quit) under an open file: EIO within 5 s, the next open starts afresh', async () => {
    await scenario(false, async (vm) => {
      assert.equal(await vm.jobType(), 'Unbounded', 'a backup job serves the running domain');
      // QEMU may exit before it answers: virsh then reports the monitor's end, which is the point.
      await execa('virsh', ['-q', '-c', LAB_URI, 'qemu-monitor-command', vm.name, '{"execute":"quit"}'], { reject: false });
      const deadline = Date.now() + EIO_DEADLINE_MS;
      while ((await vm.state()) !== 'shut off') {
        assert.ok(Date.now() < deadline, 'the domain is shut off once QEMU quit');
        await sleep(50);
      }
    });
  });

  it('the VM destroyed under an open file: EIO within 5 s, the next open starts afresh', async () => {
    await scenario(false, async (vm) => { await virsh('destroy', vm.name); });
  });
});
