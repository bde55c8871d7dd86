// Ending a mount the ways users do (SIGTERM, umount, fusermount3 -u), with files idle and with a
// reader inside: the daemon exits 0 and leaves no job, qemu-nbd, socket, scratch file or mount.
// And startup errors: non-zero exit, one clear line, nothing mounted, no process left.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, readlink, rm, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { Lab, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { freshMountpoint, mountEntry, mountFs, runFs, type FsMount, type StopHow } from '../lab/mount.js';
import { defaultRuntimeDirs, processStartTime } from '../../src/exports/runtime.js';
import { lazyUnmount } from '../../src/fs/fuse/index.js';
import { requireTools } from '../lab/tools.js';
import { startNbdkit } from '../nbd/servers.js';
import { assertSameBytes, checkpoint, MiB, reference } from './helpers.js';

/** Reads random 64 KiB blocks from one open fd until a read fails; says so on stdout. */
const READER = `
const fs = require('node:fs');
const fd = fs.openSync(process.argv[1], 'r');
const size = fs.fstatSync(fd).size, buf = Buffer.alloc(65536), pause = new Int32Array(new SharedArrayBuffer(4));
for (let n = 0; ; n++) {
  try { fs.readSync(fd, buf, 0, buf.length, Math.floor(Math.random() * size / 65536) * 65536); }
  catch (e) { process.stdout.write('error ' + e.code + '\\n'); process.exit(3); }
  if (n === 0) process.stdout.write('reading\\n');
  Atomics.wait(pause, 0, 0, 5);
}`;

interface Reader { child: ResultPromise; out: () => string }

function startReader(file: string): Reader {
  let out = '';
  const child = execa(process.execPath, ['-e', READER, file], { reject: false, stdin: 'ignore', stderr: 'ignore' });
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  return { child, out: () => out };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting: ${what}`);
    await sleep(50);
  }
}

function kill(pid: number | undefined): void {
  try { if (pid) process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}

/** Which of these processes hold /dev/fuse open (inherited from the daemon that started them). */
async function fuseHolders(pids: number[]): Promise<number[]> {
  const held = await Promise.all(pids.map(async (pid) => {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    const links = await Promise.all(fds.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')));
    return links.includes('/dev/fuse');
  }));
  return pids.filter((_, i) => held[i]);
}

/** The folders of a vircptfs instance under the run and scratch folders. */
async function instanceEntries(pid: number): Promise<string[]> {
  const dirs = defaultRuntimeDirs();
  const found: string[] = [];
  for (const root of [dirs.runDir, dirs.scratchRoot]) {
    for (const id of await readdir(root).catch(() => [] as string[])) {
      if (id.startsWith(`fs-${pid}-`)) found.push(path.join(root, id));
    }
  }
  return found;
}

/** The folders of a killed vircptfs instance (its jobs end with the lab's VMs). */
async function removeInstance(pid: number): Promise<void> {
  for (const dir of await instanceEntries(pid)) await rm(dir, { recursive: true, force: true });
}

describe('vircptfs unmount and exit', () => {
  const lab = new Lab('fsumount');
  let on: LabVm; // running: a backup job
  let off: LabVm; // shut off: qemu-nbd
  let tmp: string;
  const refs = new Map<LabVm, Buffer>();

  before(async () => {
    tmp = await mkdtemp('/var/tmp/vircptfs-fsumount-');
    [on, off] = await Promise.all([
      lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 32 * MiB }] }),
      lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 32 * MiB }] }),
    ]);
    for (const vm of [on, off]) {
      await vm.write('sda', 0, 3 * MiB, 0x42);
      await checkpoint(vm, 'u1');
      await vm.write('sda', 5 * MiB, MiB, 0x43);
    }
    await off.destroy();
    for (const vm of [on, off]) refs.set(vm, await reference(vm, 'sda', tmp));
  });
  after(async () => {
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  const mount = () => mountFs({ options: [`domain=${on.name}`, `domain=${off.name}`, 'idle=60'] });
  const disk = (m: FsMount, vm: LabVm) => m.path(vm.name, 'u1', 'sda.raw');

  /** Opens and reads the domains' disks (the exports then stay up, idle=60), returns qemu-nbd's pids. */
  async function useBoth(m: FsMount, vms = [on, off]): Promise<number[]> {
    for (const vm of vms) assertSameBytes(await readFile(disk(m, vm)), refs.get(vm)!, `${vm.name} sda.raw`);
    if (vms.includes(on)) assert.equal(await on.jobType(), 'Unbounded');
    if (!vms.includes(off)) return [];
    const pidFiles = (await leftoversOf(off.name)).filter((p) => p.endsWith('.pid'));
    assert.equal(pidFiles.length, 1, 'one qemu-nbd serves the shut-off domain');
    return Promise.all(pidFiles.map(async (p) => Number((await readFile(p, 'utf8')).trim())));
  }

  async function assertNothingLeft(m: FsMount, qemuNbd: number[]): Promise<void> {
    assert.equal(await on.jobType(), 'None', 'no backup job');
    for (const pid of qemuNbd) assert.equal(processStartTime(pid), undefined, `qemu-nbd ${pid} is gone`);
    for (const vm of [on, off]) assert.deepEqual(await leftoversOf(vm.name), [], 'no socket, pid file or scratch file');
    assert.equal(await mountEntry(m.dir), undefined, 'not in /proc/mounts');
    assert.ok(m.gone, 'the daemon is gone');
  }

  for (const how of ['SIGTERM', 'umount', 'fusermount'] as StopHow[]) {
    it(`exits 0 and releases everything on ${how} with files idle`, async () => {
      const m = await mount();
      try {
        const pids = await useBoth(m);
        assert.deepEqual(await m.stop(how), { code: 0, signal: null }, m.stderr);
        await assertNothingLeft(m, pids);
      } finally {
        await m.cleanup();
      }
    });
  }

  it('on SIGTERM with readers inside: their reads fail, the daemon exits 0, nothing is left', async () => {
    const m = await mount();
    const readers: Reader[] = [];
    try {
      const pids = await useBoth(m);
      for (const vm of [on, off]) readers.push(startReader(disk(m, vm)));
      await until('readers reading', () => readers.every((r) => r.out().includes('reading')));
      const t0 = Date.now();
      assert.deepEqual(await m.stop('SIGTERM'), { code: 0, signal: null }, m.stderr);
      console.log(`# daemon exited ${Date.now() - t0} ms after SIGTERM with 2 readers inside`);
      for (const r of readers) {
        const res = await r.child;
        assert.equal(res.exitCode, 3, `the reader saw its reads fail: ${r.out()}`);
        // EIO: the daemon failed the read; ENOTCONN: the read came after the connection ended;
        // ECONNABORTED: it was pending in the kernel when the connection was aborted (libfuse 3's
        // teardown aborts it, so a read caught in flight gets this one).
        assert.match(r.out(), /error (EIO|ENOTCONN|ECONNABORTED)/);
      }
      await assertNothingLeft(m, pids);
    } finally {
      for (const r of readers) kill(r.child.pid);
      await m.cleanup();
    }
  });

  it('umount with a reader inside is refused (busy) and serving goes on; once the reader is done, umount ends it', async () => {
    const m = await mount();
    let reader: Reader | undefined;
    try {
      const pids = await useBoth(m);
      reader = startReader(disk(m, on));
      await until('reader reading', () => reader!.out().includes('reading'));
      const busy = await execa('umount', [m.dir], { reject: false });
      assert.notEqual(busy.exitCode, 0);
      assert.match(String(busy.stderr), /busy/i);
      await sleep(500);
      assert.ok(!m.gone && (await mountEntry(m.dir)), 'still mounted and serving');
      assert.doesNotMatch(reader.out(), /error/);
      reader.child.kill('SIGTERM');
      await reader.child;
      assert.deepEqual(await m.stop('umount'), { code: 0, signal: null }, m.stderr);
      await assertNothingLeft(m, pids);
    } finally {
      kill(reader?.child.pid);
      await m.cleanup();
    }
  });

  it('a lazy fusermount3 -uz with a reader inside keeps serving it; the daemon exits 0 when it is done', async () => {
    const m = await mount();
    let reader: Reader | undefined;
    try {
      const pids = await useBoth(m);
      reader = startReader(disk(m, off));
      await until('reader reading', () => reader!.out().includes('reading'));
      await execa('fusermount3', ['-uz', m.dir]);
      assert.equal(await mountEntry(m.dir), undefined, 'detached');
      await sleep(1000);
      assert.ok(!m.gone, 'the daemon serves the reader still inside');
      assert.doesNotMatch(reader.out(), /error/);
      reader.child.kill('SIGTERM');
      await reader.child;
      assert.deepEqual(await m.waitExit(), { code: 0, signal: null }, m.stderr);
      await assertNothingLeft(m, pids);
    } finally {
      kill(reader?.child.pid);
      await m.cleanup();
    }
  });

  for (const [what, vms] of [['a backup job', () => [on]], ['a backup job and qemu-nbd', () => [on, off]]] as const) {
  it(`after kill -9 with ${what}, a new vircptfs on the same mountpoint recovers the dead mount and ends the dead one's exports`, async () => {
    const m = await mount();
    let next: FsMount | undefined;
    let pids: number[] = [];
    try {
      pids = await useBoth(m, vms());
      process.kill(m.pid, 'SIGKILL');
      assert.equal((await m.waitExit()).signal, 'SIGKILL');
      assert.equal(await on.jobType(), 'Unbounded', 'the crashed instance\'s job outlives it');
      assert.ok(await mountEntry(m.dir), 'a dead mount stays behind');
      // With the daemon gone, its FUSE connection must be dead (ENOTCONN), not hanging: no
      // process it started may hold the FUSE device.
      const holders = await fuseHolders(pids);
      // ls, not stat: the kernel may answer stat from attributes cached in the last second.
      const probe = await execa('ls', [m.dir], { reject: false, timeout: 5000 });
      assert.ok(!probe.timedOut && holders.length === 0,
        `the dead daemon's mount ${probe.timedOut ? 'hangs' : 'answers'}: /dev/fuse is still open in qemu-nbd ${holders.join(' ')}`);
      assert.match(String(probe.stderr), /not connected/);
      next = await mountFs({ dir: m.dir, options: [`domain=${on.name}`, `domain=${off.name}`, 'idle=60'] });
      assert.equal(await on.jobType(), 'None', `the crashed instance's job was ended; the new daemon said:\n${next.stderr}`);
      for (const pid of pids) assert.equal(processStartTime(pid), undefined, `its qemu-nbd ${pid} was stopped`);
      for (const vm of [on, off]) assert.deepEqual(await leftoversOf(vm.name), [], 'its folders are gone');
      assert.deepEqual(await instanceEntries(m.pid), [], 'nothing of the dead instance is left');
      const again = await useBoth(next);
      assert.deepEqual(await next.stop('SIGTERM'), { code: 0, signal: null }, next.stderr);
      await assertNothingLeft(next, again);
    } finally {
      await next?.cleanup();
      // The dead daemon's qemu-nbd, when the test failed before the next mount ended it (and
      // one holding the dead daemon's FUSE device keeps its mount hanging): end it, it is ours.
      for (const pid of pids) {
        if ((await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).startsWith('qemu-nbd\0')) kill(pid);
      }
      await m.cleanup();
      await removeInstance(m.pid); // when no next mount cleaned up after the killed one
    }
  });
  }

  it('a dead FUSE mount of another filesystem (nbdfuse killed) is left alone: busy', async () => {
    await requireTools('nbdfuse', 'nbdkit');
    const dir = await freshMountpoint('foreign');
    const server = await startNbdkit({ plugin: ['memory', '1M'] });
    const fuse = execa('nbdfuse', [dir, '--unix', server.socketPath!], { reject: false, stdio: 'ignore' });
    try {
      await until('nbdfuse mounted', async () => (await mountEntry(dir))?.type === 'fuse');
      process.kill(fuse.pid!, 'SIGKILL');
      await fuse;
      const dead = async () => (await statfs(dir).then(() => 'answers', (e: NodeJS.ErrnoException) => e.code)) === 'ENOTCONN';
      await until('the nbdfuse mount is dead', dead, 5000);
      const r = await runFs(['-f', 'qemu:///system', dir]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^vircptfs: mountpoint .* is busy: a fuse filesystem is mounted there$/m);
      assert.equal((await mountEntry(dir))?.type, 'fuse', 'the dead mount is not ours to detach');
    } finally {
      kill(fuse.pid);
      await lazyUnmount(dir).catch(() => {});
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  describe('startup errors: non-zero exit, one clear line on stderr, nothing mounted, no process left', () => {
    let dir: string;
    let full: string;
    before(async () => {
      dir = await freshMountpoint('err');
      full = await freshMountpoint('full');
      await writeFile(`${full}/x`, '');
    });
    after(() => Promise.all([dir, full].map((d) => rm(d, { recursive: true, force: true }))));

    const cases: Array<[string, () => string[], number, RegExp]> = [
      ['a bad option', () => ['-f', '-o', 'bogus', 'qemu:///system', dir], 2, /unknown option: bogus/],
      ['a bad option value', () => ['-f', '-o', 'idle=soon', 'qemu:///system', dir], 2, /idle=soon/],
      ['a missing mountpoint', () => ['-f', 'qemu:///system', `${dir}/nope`], 2, /mountpoint .*nope does not exist/],
      ['no mountpoint at all', () => ['-f', 'qemu:///system'], 2, /expected SOURCE and MOUNTPOINT/],
      ['a mountpoint that is not empty', () => ['-f', 'qemu:///system', full], 2, /mountpoint .* is not empty/],
      ['an unknown qemu URI', () => ['-f', 'qemu:///nonexistent', dir], 1, /cannot reach libvirt at qemu:\/\/\/nonexistent: /],
      ['an unreachable libvirt socket', () => ['-f', 'test+unix:///x?socket=/nonexistent', dir], 1, /cannot reach libvirt at .*No such file/],
    ];
    for (const [what, args, code, message] of cases) {
      it(what, async () => {
        const r = await runFs(args());
        assert.equal(r.code, code, r.stderr);
        // Info lines (e.g. cleanup after another instance that crashed) are not errors.
        const lines = r.stderr.split('\n').filter((l) => l.length > 0 && !/^\(vircptfs --help|^vircptfs: info: /.test(l));
        assert.equal(lines.length, 1, `one line:\n${r.stderr}`);
        assert.match(lines[0]!, /^vircptfs: /);
        assert.match(lines[0]!, message);
        assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
        for (const d of [dir, full]) assert.equal(await mountEntry(d), undefined, `${d} is not mounted`);
        assert.equal(processStartTime(r.pid), undefined, 'no process left');
      });
    }
  });
});
