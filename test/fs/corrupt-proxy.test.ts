// Replies corrupted on their way from the export's NBD server to the daemon (a corrupting proxy
// of the tests' own, at the export's socket path, breaking the first read reply of each
// connection: a read whose fetch failed on one connection is retried on another, so all must
// fail for the reader to see it): the reader gets EIO, never wrong bytes; the daemon lives; the
// next open starts a new export and reads the right bytes; nothing is left.
import assert from 'node:assert/strict';
import { mkdtemp, open, readFile, rename, rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { mountFs } from '../lab/mount.js';
import { startCorruptingProxy } from '../lab/nbd-proxy.js';
import { assertSameBytes, checkpoint, MiB, reference, rejectsWith, waitReleased } from './helpers.js';

const DISK = 16 * MiB;

describe('vircptfs: a corrupted NBD reply', () => {
  const lab = new Lab('proxy');
  let tmp: string;

  before(async () => { tmp = await mkdtemp('/var/tmp/vircptfs-proxy-'); });
  after(async () => {
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('a proxy on the export\'s socket breaks a read\'s reply: that read gets EIO, the daemon lives, the next open reads the right bytes', async (t) => {
    const vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: DISK }, { target: 'sdb', bus: 'sata', size: DISK }] });
    await vm.write('sda', 0, 4 * MiB, 0x41);
    await vm.write('sdb', 0, DISK, 0x42);
    await checkpoint(vm, 'c1');
    const ref = await reference(vm, 'sdb', tmp);
    const m = await mountFs({ options: [`domain=${vm.name}`, 'idle=1', 'nofreeze'] });
    t.after(() => m.cleanup());
    // sda's open starts the export; sdb's NBD connections are made at sdb's first open, so a
    // proxy put at the socket path now carries them.
    const sda = await open(m.path(vm.name, 'c1', 'sda.raw'), 'r');
    try {
      const socket = (await leftoversOf(vm.name)).find((p) => p.endsWith('.sock'));
      assert.ok(socket, 'the export has a socket');
      await rename(socket, `${socket}.real`); // same folder: the release removes it
      const proxy = await startCorruptingProxy(socket, `${socket}.real`);
      t.after(() => proxy.close());
      const sdb = await open(m.path(vm.name, 'c1', 'sdb.raw'), 'r');
      try {
        assert.ok(proxy.connections > 0, 'sdb connects through the proxy');
        const buf = Buffer.alloc(64 * 1024, 0xee);
        await rejectsWith(sdb.read(buf, 0, buf.length, 0), 'EIO', 'the read whose reply was broken');
        assert.ok(proxy.corrupted >= 1);
        assert.ok(buf.every((b) => b === 0xee), 'not a byte of the broken reply reached the reader');
        assert.match(m.stderr, /magic|protocol/i, 'the log says what broke');
      } finally {
        await sdb.close();
      }
      // Before the next export: it makes a new socket at the same path.
      await proxy.close();
    } finally {
      await sda.close();
    }
    assert.ok(!m.gone, 'the daemon lives');
    assertSameBytes(await readFile(m.path(vm.name, 'c1', 'sdb.raw')), ref, 'the next open');
    await waitReleased(vm);
    assert.deepEqual(await m.stop('SIGTERM'), { code: 0, signal: null }, m.stderr);
    assert.deepEqual(await leftoversOf(vm.name), [], 'nothing left behind');
  });
});
