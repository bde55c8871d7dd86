// README recipe "Full backup": cp and rsync --sparse straight from a checkpoint
// directory give byte-exact copies of the disks (the VM is paused, so the images are stable and
// the reference is qemu-img's own reading of them) that keep the disks' holes.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { vircpt } from '../lab/cli.js';
import { imageToRaw } from '../lab/images.js';
import { Lab, type LabVm } from '../lab/lab.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { requireTools } from '../lab/tools.js';
import { assertNothingLeft, assertSameBytes, bashOk, binDir, KiB, MiB, readmeLine, waitReleased, type RecipeNames } from './helpers.js';

/** st_blocks counts 512-byte units (stat(2)). */
const ST_BLOCK = 512;

describe('README recipe: full backup', () => {
  const lab = new Lab('rcfull');
  let vm: LabVm;
  let m: FsMount;
  let tmp: string;
  let bin: string;
  let names: RecipeNames;
  const written = { vdb: 0 };
  const line = (l: string) => readmeLine(l, names);

  before(async () => {
    await requireTools('rsync');
    tmp = await mkdtemp('/var/tmp/vircptfs-rcfull-');
    bin = await binDir(tmp);
    vm = await lab.vm({
      disks: [
        { target: 'sda', bus: 'sata', size: 32 * MiB, files: { 'etc/hostname': 'guest\n', 'srv/blob.bin': randomBytes(2 * MiB) } },
        { target: 'vdb', size: 32 * MiB },
      ],
    });
    const writes: Array<[number, number, number]> = [[0, 4 * KiB, 0x11], [5 * MiB + 123, 1 * MiB, 0x22], [31 * MiB, 64 * KiB, 0x33]];
    await vm.write('vdb', 4 * MiB, 512 * KiB, 0x44); // before the checkpoint: a full copy holds it too
    written.vdb += 512 * KiB;
    const r = await vircpt(['-d', vm.name, 'create', '--name', 'c1']);
    assert.equal(r.code, 0, r.stderr);
    for (const [o, l, p] of writes) await vm.write('vdb', o, l, p);
    written.vdb += writes.reduce((s, [, l]) => s + l, 0);
    const backup = path.join(tmp, 'backup');
    await mkdir(backup);
    m = await mountFs({ options: [`domain=${vm.name}`, 'idle=1'] });
    names = { mount: m.dir, domain: vm.name, checkpoints: ['c1'], backup };
  });
  after(async () => {
    await m?.cleanup();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('cp (sparse by SEEK_DATA/SEEK_HOLE) and rsync --sparse copy every byte and keep the holes', async () => {
    const recipe = [
      line('M=/mnt/vircptfs-demo/vircptfs-demo/demo-1'),
      line('cp $M/sda.raw /backup/sda.raw'),
      line('rsync --sparse $M/vdb.raw /backup/vdb.raw'),
    ];
    await bashOk(recipe.join('\n'), { bin });

    for (const d of vm.disks) {
      const copy = path.join(names.backup!, `${d.target}.raw`);
      const ref = path.join(tmp, `ref-${d.target}.raw`);
      await imageToRaw(vm.image(d.target), ref); // paused VM: the disk now is the export's disk
      assertSameBytes(await readFile(copy), await readFile(ref), `${d.target} copy`);
      const st = await stat(copy);
      assert.equal(st.size, d.size);
      const allocated = st.blocks * ST_BLOCK;
      assert.ok(allocated < d.size / 4, `${d.target} copy is not sparse: ${allocated} of ${d.size} bytes allocated`);
      // What the mount says, seen by du: also far below the size.
      const src = await stat(m.path(vm.name, 'c1', `${d.target}.raw`));
      assert.ok(src.blocks * ST_BLOCK < d.size / 4, `${d.target}.raw st_blocks ${src.blocks} hides the holes`);
    }
    const vdb = await stat(path.join(names.backup!, 'vdb.raw'));
    assert.ok(vdb.blocks * ST_BLOCK >= written.vdb, `vdb copy holds the ${written.vdb} bytes written`);
    assert.ok(vdb.blocks * ST_BLOCK <= written.vdb + 4 * 64 * KiB, `vdb copy allocates ${vdb.blocks * ST_BLOCK} bytes for ${written.vdb} written`);
  });

  it('releases the export after the copies, and umount leaves nothing', async () => {
    await waitReleased(vm);
    await bashOk(line('umount /mnt/vircptfs-demo'), { bin });
    assert.deepEqual(await m.waitExit(), { code: 0, signal: null }, m.stderr);
    await assertNothingLeft(vm, m.dir);
  });
});
