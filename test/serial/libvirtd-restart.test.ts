// libvirt goes away and comes back (a package upgrade restarts libvirtd): a mount must not wedge.
// Serial: these tests stop libvirtd, which breaks every other test's libvirt connections.
// Lab fact: across a restart the running QEMU and its backup job survive, and the export's NBD
// socket keeps serving; libvirt connections opened before it are dead.
import assert from 'node:assert/strict';
import { open, mkdtemp, readFile, rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { Lab, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { LibvirtdGuard } from '../lab/libvirtd.js';
import { mountEntry, mountFs, type FsMount } from '../lab/mount.js';
import { processStartTime } from '../../src/exports/runtime.js';
import { assertSameBytes, checkpoint, MiB, reference } from '../fs/helpers.js';

async function until(what: string, cond: () => Promise<boolean>, timeoutMs: number, detail = () => ''): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting: ${what}\n${detail()}`);
    await sleep(100);
  }
}

describe('libvirtd restarted or stopped under a mount', () => {
  const lab = new Lab('lvrst');
  const libvirtd = new LibvirtdGuard();
  let vm: LabVm;
  let tmp: string;
  let ref: Buffer;

  before(async () => {
    tmp = await mkdtemp('/var/tmp/vircptfs-lvrestart-');
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 16 * MiB }] });
    await vm.write('sda', 0, 2 * MiB, 0x5a);
    await checkpoint(vm, 'r1');
    await vm.write('sda', 4 * MiB, MiB, 0x5b);
    ref = await reference(vm, 'sda', tmp);
  });
  after(async () => {
    await libvirtd.ensureRunning();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  const disk = (m: FsMount) => m.path(vm.name, 'r1', 'sda.raw');

  /** No job on the VM, none of our files for it. */
  async function nothingLeft(): Promise<boolean> {
    return (await vm.jobType()) === 'None' && (await leftoversOf(vm.name)).length === 0;
  }

  it('restarted mid-export: reads go on, the idle release and umount finish, nothing is left', async () => {
    const m = await mountFs({ options: [`domain=${vm.name}`, 'idle=1'] });
    try {
      const fh = await open(disk(m), 'r').catch((err: unknown) => assert.fail(`${String(err)}\n${m.stderr}`));
      try {
        const head = Buffer.alloc(MiB);
        await fh.read(head, 0, MiB, 0);
        assert.equal(await vm.jobType(), 'Unbounded', 'the export is up');
        await libvirtd.restart();
        // The job and the NBD socket survived: the whole disk reads, byte for byte.
        const all = Buffer.alloc(ref.length);
        const { bytesRead } = await fh.read(all, 0, all.length, 0);
        assert.equal(bytesRead, ref.length);
        assertSameBytes(all, ref, 'sda.raw after the restart');
      } finally {
        await fh.close();
      }
      // idle=1: the release runs a second after the close, through libvirt's new instance.
      await until('the idle release ends the job and removes our files', nothingLeft, 20_000, () => m.stderr);
      const t0 = Date.now();
      const um = await execa('umount', [m.dir], { reject: false, timeout: 20_000 });
      assert.equal(um.exitCode, 0, `umount: ${String(um.stderr)}`);
      assert.deepEqual(await m.waitExit(10_000), { code: 0, signal: null }, m.stderr);
      console.log(`# umount to exit after a libvirtd restart: ${Date.now() - t0} ms`);
      assert.ok(await nothingLeft(), 'no job, socket or scratch file');
      assert.equal(await mountEntry(m.dir), undefined);
    } finally {
      await libvirtd.ensureRunning();
      await m.cleanup();
    }
  });

  it('stopped: reads go on; at umount the daemon exits within seconds, its helper ends the job once libvirtd is back', async () => {
    // A log file: the daemon and the helper it leaves both write there.
    const logFile = `${tmp}/vircptfs.log`;
    const logged = () => readFile(logFile, 'utf8').catch(() => '');
    const m = await mountFs({ options: [`domain=${vm.name}`, 'idle=600', `log=${logFile}`] });
    let helper: number | undefined;
    try {
      assertSameBytes(await readFile(disk(m)), ref, 'sda.raw');
      assert.equal(await vm.jobType(), 'Unbounded', 'the export is up');
      await libvirtd.stop();
      // Reading needs no libvirt: the export's NBD server is QEMU's.
      assertSameBytes(await readFile(disk(m)), ref, 'sda.raw read again while libvirtd is down');
      const t0 = Date.now();
      const um = await execa('umount', [m.dir], { reject: false, timeout: 20_000 });
      assert.equal(um.exitCode, 0, `umount: ${String(um.stderr)}`);
      assert.deepEqual(await m.waitExit(15_000), { code: 0, signal: null }, await logged());
      const exitMs = Date.now() - t0;
      console.log(`# umount to exit with libvirtd down: ${exitMs} ms`);
      assert.ok(exitMs < 15_000);
      const log = await logged();
      assert.match(log, new RegExp(`could not release ${vm.name}\\b.*libvirt`), 'the log says what it could not release');
      const said = /helper \(pid (\d+)\)/.exec(log);
      assert.ok(said, `the log names the helper left to finish the release:\n${log}`);
      helper = Number(said[1]);
      assert.notEqual(processStartTime(helper), undefined, 'the helper waits for libvirt');
      assert.notEqual((await leftoversOf(vm.name)).length, 0, 'the record stays for the helper');
      await libvirtd.start();
      // (The job survives a stopped libvirtd: the first test reads through it after a restart.)
      await until('the helper ends the job, removes our files and exits',
        async () => (await nothingLeft()) && processStartTime(helper!) === undefined, 30_000, () => m.stderr);
      assert.match(await logged(), new RegExp(`released the export of ${vm.name} left by exited instance`), 'the helper did it');
    } finally {
      await libvirtd.ensureRunning();
      if (helper !== undefined && processStartTime(helper) !== undefined) {
        try { process.kill(helper, 'SIGTERM'); } catch { /* gone */ }
      }
      await m.cleanup();
    }
  });
});
