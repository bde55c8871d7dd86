// vircptfs through remote libvirt URIs (the lab's qemu+ssh and qemu+tls to this machine's own
// libvirtd, scripts/lab-remote.sh): the backup job's NBD server listens on TCP with TLS, our
// client reads it with the lab's certificates. Byte-exact disks and exact dirty maps, a busy port
// skipped, a cut connection, nothing left on the "hypervisor", and two backup servers (host ids)
// that never touch each other's jobs.
import assert from 'node:assert/strict';
import { chmod, mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultRuntimeDirs } from '../../src/exports/runtime.js';
import { parseBackupXml } from '../../src/libvirt/backup.js';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { remoteLab } from '../lab/remote.js';
import { assertCovers, assertSameBytes, checkpoint, dirtyOf, dirtyRanges, KiB, MiB, reference, rejectsWith, type DirtyMapJson } from './helpers.js';

const lab = remoteLab();
/** A port range of this test run's own (other test files may run meanwhile). */
const BASE = 20000 + (process.pid % 1000) * 16;
const ports = (from: number, n: number) => `nbd_ports=${from}-${from + n - 1}`;

async function job(vm: LabVm) {
  const xml = await virsh('backup-dumpxml', vm.name).catch(() => '');
  return xml === '' ? undefined : parseBackupXml(xml);
}

async function until(cond: () => Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('vircptfs over qemu+ssh and qemu+tls, NBD over TLS', () => {
  const labVms = new Lab('remote');
  let vm: LabVm;
  let scratch: string;
  let tmp: string;
  let ref: Buffer;
  const writes: Array<[number, number]> = [];
  const opts = (more: string[]) => [`domain=${vm.name}`, 'idle=1', 'nbd_tls=require', `nbd_certs=${lab.nbdCerts}`, `scratch=${scratch}`, ...more];

  before(async () => {
    tmp = await mkdtemp('/var/tmp/vircptfs-remote-');
    scratch = await mkdtemp('/var/tmp/vircptfs-remote-scratch-');
    await chmod(scratch, 0o1777); // as a hypervisor's /var/tmp: QEMU's user creates files there
    vm = await labVms.vm({ disks: [{ target: 'sda', bus: 'sata', size: 32 * MiB }] });
    await vm.write('sda', 0, 4 * MiB, 0x11);
    await checkpoint(vm, 'c1');
    for (const [o, n] of [[1 * MiB, 512 * KiB], [9 * MiB, 64 * KiB], [20 * MiB + 3, 5]] as Array<[number, number]>) {
      await vm.write('sda', o, n, 0x5a);
      writes.push([o, n]);
    }
    ref = await reference(vm, 'sda', tmp);
  });
  after(async () => {
    await labVms.cleanup();
    await rm(tmp, { recursive: true, force: true });
    await rm(scratch, { recursive: true, force: true });
  });

  /** Reads sda.raw and dirty-map.json, checks them, and unmounts: job gone, no scratch file left. */
  async function readAndRelease(m: FsMount, port: number): Promise<void> {
    const dir = m.path(vm.name, 'c1');
    assertSameBytes(await readFile(path.join(dir, 'sda.raw')), ref, 'sda.raw over NBD with TLS');
    const map = JSON.parse(await readFile(path.join(dir, 'dirty-map.json'), 'utf8')) as DirtyMapJson;
    assertCovers(map.disks.sda!.extents, 32 * MiB, 'sda');
    assert.deepEqual(dirtyOf(map.disks.sda!.extents), dirtyRanges(writes));
    const j = await job(vm);
    assert.equal(j?.transport, 'tcp');
    assert.equal(j?.port, port);
    assert.match(await virsh('backup-dumpxml', vm.name), /tls=["']yes["']/);
    assert.equal((await readdir(scratch)).length, 1, 'one scratch file, on the "hypervisor"');
    await m.cleanup();
    await until(async () => (await job(vm)) === undefined, 'the job ends at unmount');
    await until(async () => (await readdir(scratch)).length === 0, 'libvirt removed the scratch file');
    assert.deepEqual(await leftoversOf(vm.name), [], 'nothing of ours left on this machine either');
  }

  it('qemu+ssh: byte-exact disk and exact dirty map with nbd_tls=require', async () => {
    const m = await mountFs({ source: lab.sshUri, options: opts([ports(BASE, 4)]) });
    try {
      await readAndRelease(m, BASE);
    } finally {
      await m.cleanup();
    }
  });

  it('qemu+tls: the same, and a busy port is skipped', async () => {
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(BASE + 4, '127.0.0.1', resolve));
    const m = await mountFs({ source: lab.tlsUri, options: opts([ports(BASE + 4, 4)]) }).catch(async (err) => { busy.close(); throw err; });
    try {
      await readAndRelease(m, BASE + 5);
    } finally {
      await m.cleanup();
      busy.close();
    }
  });

  it('a connection cut mid-read gives EIO within seconds, and the next open works', async () => {
    // nbd_host=127.0.0.2 (in the certificate) is a proxy to QEMU's 127.0.0.1, killed mid-read.
    const from = BASE + 8;
    const sockets = new Set<net.Socket>();
    const proxies = [from, from + 1].map((port) => net.createServer((client) => {
      const server = net.connect(port, '127.0.0.1');
      for (const s of [client, server]) { sockets.add(s); s.on('error', () => {}); s.on('close', () => sockets.delete(s)); }
      client.pipe(server).pipe(client);
    }));
    await Promise.all(proxies.map((p, i) => new Promise<void>((resolve) => p.listen(from + i, '127.0.0.2', resolve))));
    const m = await mountFs({ source: lab.sshUri, options: opts([ports(from, 2), 'nbd_bind=127.0.0.1', 'nbd_host=127.0.0.2', 'cache=16M']) });
    try {
      const file = path.join(m.path(vm.name, 'c1'), 'sda.raw');
      const fh = await open(file, 'r');
      const buf = Buffer.alloc(MiB);
      await fh.read(buf, 0, MiB, 0); // connected and reading
      for (const s of sockets) s.destroy();
      const t0 = Date.now();
      await rejectsWith((async () => { for (let o = MiB; o < 32 * MiB; o += MiB) await fh.read(buf, 0, MiB, o); })(), 'EIO', 'read after the cut');
      assert.ok(Date.now() - t0 < 10_000, `EIO after ${Date.now() - t0} ms`);
      await fh.close();
      assertSameBytes(await readFile(file), ref, 'the next open reads the whole disk');
    } finally {
      await m.cleanup();
      for (const p of proxies) p.close();
      for (const s of sockets) s.destroy();
    }
  });

  it('a second backup server (another host id) never touches the first one\'s job, even once that one is dead', async () => {
    const a = await mountFs({ source: lab.sshUri, options: opts([ports(BASE + 10, 3)]), env: { VIRCPTFS_HOST_ID: 'hosta' } });
    const b = await mountFs({ source: lab.tlsUri, options: opts([ports(BASE + 10, 3)]), env: { VIRCPTFS_HOST_ID: 'hostb' } });
    try {
      const fh = await open(path.join(a.path(vm.name, 'c1'), 'sda.raw'), 'r');
      await fh.read(Buffer.alloc(4096), 0, 4096, 0);
      const first = await job(vm);
      assert.match(first?.disks[0]?.scratch ?? '', /\/vircptfs-hosta-fs-\d+-\d+-/, 'the scratch file names the host and instance');
      await rejectsWith(readFile(path.join(b.path(vm.name, 'c1'), 'sda.raw')), 'EBUSY', 'host b while host a exports');
      await fh.close();
      process.kill(a.pid, 'SIGKILL'); // host a's instance is dead now; host b must still leave its job alone
      await a.exited;
      await rejectsWith(readFile(path.join(b.path(vm.name, 'c1'), 'sda.raw')), 'EBUSY', 'host b after host a died');
      assert.deepEqual(await job(vm), first, 'host a\'s job is untouched');
    } finally {
      await b.cleanup();
      await a.cleanup();
      if (await job(vm)) await virsh('domjobabort', vm.name);
      const runDir = defaultRuntimeDirs().runDir; // what the killed instance left on this machine
      for (const id of await readdir(runDir).catch(() => [] as string[])) {
        if (id.startsWith(`fs-${a.pid}-`)) await rm(path.join(runDir, id), { recursive: true, force: true });
      }
      await until(async () => (await job(vm)) === undefined, 'job gone');
      await until(async () => (await readdir(scratch)).length === 0, 'scratch removed');
    }
  });

  it('scratch_budget: guest writes that take the job\'s scratch over it give the export up; the next open starts afresh', async () => {
    const m = await mountFs({ source: lab.sshUri, options: opts([ports(BASE + 13, 3), 'scratch_budget=1M']) });
    try {
      const file = path.join(m.path(vm.name, 'c1'), 'sda.raw');
      const fh = await open(file, 'r');
      await fh.read(Buffer.alloc(4096), 0, 4096, 0);
      // Copy-before-write: 2 MiB of guest writes put 2 MiB into the job's scratch image.
      await vm.write('sda', 24 * MiB, 2 * MiB, 0x11); // last test: the disk may change now
      await until(async () => (await job(vm)) === undefined, 'the budget guard ends the job');
      await rejectsWith(fh.read(Buffer.alloc(MiB), 0, MiB, 8 * MiB), 'EIO', 'a read after the export was given up');
      await fh.close();
      assert.match(m.stderr, /over the scratch_budget of 1\.0 MiB; giving this export up/);
      assert.equal((await readFile(file)).length, 32 * MiB, 'the next open starts a new export');
    } finally {
      await m.cleanup();
    }
    await until(async () => (await readdir(scratch)).length === 0, 'scratch removed');
  });
});
