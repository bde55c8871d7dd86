// A realistic guest disk (GPT, ext4 at 1 MiB) read the way an admin would: the partition of
// <target>.raw loop-mounted read-only by offset, its files' checksums equal to what was put in.
// Once with the domain running (backup job) and once shut off (qemu-nbd).

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { Lab, type LabVm } from '../lab/lab.js';
import { PARTITION_OFFSET } from '../lab/images.js';
import { mountEntry, mountFs, type FsMount } from '../lab/mount.js';
import { requireTools, run } from '../lab/tools.js';
import { checkpoint, MiB, waitReleased } from './helpers.js';

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

// Through the page cache (the default) and with -o direct_io (the loop device then reads through
// FUSE's direct I/O path).
for (const extra of [[], ['direct_io']]) describe(`vircptfs: an ext4 partition of a disk file, loop-mounted${extra.length ? ` (${extra.join(',')})` : ''}`, () => {
  const lab = new Lab('fsloop');
  let vm: LabVm;
  let m: FsMount;
  let tmp: string;
  const content: Record<string, Buffer> = {
    'hello.txt': Buffer.from('hello from the guest\n'),
    'data/random.bin': randomBytes(3 * MiB + 12345),
    'data/deep/zeros.bin': Buffer.alloc(256 * 1024),
  };

  before(async () => {
    await requireTools('losetup', 'mkfs.ext4', 'sfdisk');
    tmp = await mkdtemp('/var/tmp/vircptfs-fsloop-');
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 48 * MiB, files: content }] });
    await checkpoint(vm, 'l1');
    m = await mountFs({ options: [`domain=${vm.name}`, 'idle=1', ...extra] });
  });
  after(async () => {
    await m?.cleanup();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  /** Loop-mounts the partition of sda.raw, checks every file, always unmounts the loop. */
  async function checkPartition(tag: string): Promise<void> {
    const raw = m.path(vm.name, 'l1', 'sda.raw');
    const dir = await mkdtemp(path.join(tmp, `${tag}-`));
    await run('mount', ['-o', `ro,noload,offset=${PARTITION_OFFSET}`, raw, dir]);
    try {
      assert.equal((await mountEntry(dir))?.type, 'ext4');
      for (const [rel, data] of Object.entries(content)) {
        assert.equal(sha256(await readFile(path.join(dir, rel))), sha256(data), `${tag}: ${rel}`);
      }
    } finally {
      await execa('umount', [dir], { reject: false });
      if (await mountEntry(dir)) await execa('umount', ['-l', dir], { reject: false });
    }
    assert.equal(await mountEntry(dir), undefined);
    assert.equal((await run('losetup', ['-j', raw])).trim(), '', 'the loop device is gone');
    await waitReleased(vm);
  }

  it('reads the files of a running domain\'s disk', async () => {
    await checkPartition('running');
  });

  it('reads the files of a shut-off domain\'s disk', async () => {
    await vm.destroy();
    await checkPartition('shut-off');
  });
});

