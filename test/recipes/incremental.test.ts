// README recipe "Incremental backup": a full copy from checkpoint c1's export, guest writes, then
// the README's cycle (create c2; incremental-backup.sh with c1; delete c1) brings the copy up to
// exactly the disk of now. Then the order the README warns about: a checkpoint created after the
// export the copy came from misses the writes made in between, and the right base repairs it.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { vircpt } from '../lab/cli.js';
import { imageToRaw } from '../lab/images.js';
import { Lab, type LabVm } from '../lab/lab.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { requireTools } from '../lab/tools.js';
import {
  assertNothingLeft, assertSameBytes, bashOk, binDir, dirtyRanges, firstDiff, KiB, MiB, readmeLine, waitReleased,
  type RecipeNames,
} from './helpers.js';

const SIZE = 32 * MiB;
type Write = [offset: number, length: number, pattern: number];

describe('README recipe: incremental backup', () => {
  const lab = new Lab('rcincr');
  let vm: LabVm;
  let m: FsMount;
  let tmp: string;
  let bin: string;
  let copy: string;
  let base: RecipeNames;

  /** Guest writes; returns the [offset, length] of each, for the dirty map expected. */
  async function write(writes: Write[]): Promise<Array<[number, number]>> {
    for (const [o, l, p] of writes) await vm.write('sda', o, l, p);
    return writes.map(([o, l]) => [o, l]);
  }
  async function create(name: string): Promise<void> {
    const r = await vircpt(['-d', vm.name, 'create', '--name', name]);
    assert.equal(r.code, 0, r.stderr);
  }
  /** The disk now, as qemu-img reads it (the VM is paused: nothing else changes it). */
  async function diskNow(tag: string): Promise<Buffer> {
    const out = path.join(tmp, `now-${tag}.raw`);
    await imageToRaw(vm.image('sda'), out);
    return readFile(out);
  }
  const names = (cps: string[]) => ({ ...base, checkpoints: cps, backup: path.dirname(copy) });
  /** The README's step 2 alone: update the copy from checkpoint `cp`'s dirty map. */
  const incremental = (cp: string) => readmeLine(
    'scripts/incremental-backup.sh /mnt/vircptfs-demo vircptfs-demo demo-1 sda /backup/sda.raw', names([cp]));
  /** The README's incremental cycle: create `next`, update the copy from `cp`, delete `cp`. */
  const cycle = (cp: string, next: string) => [
    readmeLine('vircpt -d vircptfs-demo create --name demo-2', names([cp, next])),
    incremental(cp),
    readmeLine('vircpt -d vircptfs-demo delete --name demo-1', names([cp, next])),
  ].join('\n');
  /** "incremental-backup: sda: N extent(s), B bytes copied ..." */
  function reported(stdout: string): { extents: number; bytes: number } {
    const r = /^incremental-backup: sda: (\d+) extent\(s\), (\d+) bytes copied into (\S+) /m.exec(stdout);
    assert.ok(r, `no summary line in: ${stdout}`);
    assert.equal(r[3], copy);
    return { extents: Number(r[1]), bytes: Number(r[2]) };
  }
  const expectedCopy = (writes: Array<[number, number]>) => {
    const ranges = dirtyRanges(writes);
    return { extents: ranges.length, bytes: ranges.reduce((s, [, l]) => s + l, 0) };
  };

  before(async () => {
    await requireTools('jq', 'dd');
    tmp = await mkdtemp('/var/tmp/vircptfs-rcincr-');
    bin = await binDir(tmp);
    copy = path.join(tmp, 'backup', 'sda.raw');
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: SIZE }] });
    await write([[0, 1 * MiB, 0x10], [8 * MiB, 1 * MiB, 0x11]]); // data before any checkpoint
    m = await mountFs({ options: [`domain=${vm.name}`, 'idle=1'] });
    base = { mount: m.dir, domain: vm.name };
  });
  after(async () => {
    await m?.cleanup();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('the README cycle brings a full copy up to the disk of now, copying only dirty extents', async () => {
    await create('c1');
    const sinceC1 = await write([[12 * MiB, 64 * KiB, 0x12]]); // between c1 and the full copy: in both
    await bashOk(`mkdir -p ${path.dirname(copy)}\n` + [
      readmeLine('M=/mnt/vircptfs-demo/vircptfs-demo/demo-1', names(['c1'])),
      readmeLine('cp $M/sda.raw /backup/sda.raw', names(['c1'])),
    ].join('\n'), { bin });
    await waitReleased(vm); // idle=1: the full copy's export is gone; later writes are not in it
    sinceC1.push(...await write([
      [3 * 64 * KiB - 1000, 200 * KiB, 0x21], // unaligned, across four 64 KiB boundaries
      [20 * MiB, 64 * KiB, 0x22],
      [8 * MiB + 100 * KiB, 300 * KiB, 0x00], // zeros over data the full copy holds
      [SIZE - 512, 512, 0x23], // the disk's last sector
    ]));

    assert.notEqual(firstDiff(await readFile(copy), await diskNow('stale')), -1, 'the full copy is behind the disk');

    const r = await bashOk(cycle('c1', 'c2'), { bin });
    assert.deepEqual(reported(r.stdout), expectedCopy(sinceC1), r.stdout);
    assertSameBytes(await readFile(copy), await diskNow('cycle'), 'updated copy vs the disk now');
    const list = await vircpt(['-d', vm.name, 'list', '--json']);
    assert.doesNotMatch(list.stdout, /"c1"/, 'step 3 deleted c1');
    assert.match(list.stdout, /"c2"/);
    await waitReleased(vm);
  });

  it('a checkpoint made after the copy\'s export misses the writes in between; the right base does not', async () => {
    // The copy now matches the cycle's export E1 (c2 predates it). The wrong order: a checkpoint
    // created after E1, with a guest write in between, used as the next increment's base.
    const missed: Write = [16 * MiB, 128 * KiB, 0x31];
    await write([missed]);
    await create('late');
    const sinceLate = await write([[24 * MiB, 64 * KiB, 0x32]]);

    const wrong = await bashOk(incremental('late'), { bin });
    assert.deepEqual(reported(wrong.stdout), expectedCopy(sinceLate), wrong.stdout);
    const now = await diskNow('wrong');
    const bytes = await readFile(copy);
    assert.equal(firstDiff(bytes, now), missed[0], 'the copy differs exactly where the missed write is');
    assert.ok(bytes.subarray(missed[0], missed[0] + missed[1]).every((b) => b === 0), 'the copy holds the old (zero) bytes there');
    assert.ok(bytes.subarray(missed[0] + missed[1]).equals(now.subarray(missed[0] + missed[1])), 'and is right after it');
    await waitReleased(vm); // another checkpoint's dirty-map.json is EBUSY while an export runs

    // c2 was created before E1, the export the copy came from: its map covers the missed write.
    const right = await bashOk(incremental('c2'), { bin });
    assert.deepEqual(reported(right.stdout), expectedCopy([[missed[0], missed[1]], ...sinceLate]), right.stdout);
    assertSameBytes(await readFile(copy), now, 'copy repaired from c2');
    await waitReleased(vm);
  });

  it('umount leaves nothing', async () => {
    await bashOk(readmeLine('umount /mnt/vircptfs-demo', base), { bin });
    assert.deepEqual(await m.waitExit(), { code: 0, signal: null }, m.stderr);
    await assertNothingLeft(vm, m.dir);
  });
});
