// README recipe "Inspect or boot a checkpoint without touching the VM": a qcow2 overlay backed by
// the checkpoint's sda.raw, the export held by the shell's fd 9. While the fd is open the export
// outlives the idle time and guest writes do not show through; the overlay reads exactly the disk
// of the export's point in time. Closing the fd lets the export go.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { vircpt } from '../lab/cli.js';
import { imageToRaw } from '../lab/images.js';
import { Lab, type LabVm } from '../lab/lab.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { requireTools } from '../lab/tools.js';
import { assertNothingLeft, bash, bashOk, binDir, MiB, readmeLine, waitReleased, type RecipeNames } from './helpers.js';

const IDLE_S = 1;
/** Where the test's own commands go in the recipe: after the overlay exists, before rm. */
const READY = 'overlay-ready';

describe('README recipe: a qcow2 overlay on a checkpoint', () => {
  const lab = new Lab('rcovl');
  let vm: LabVm;
  let m: FsMount;
  let tmp: string;
  let bin: string;
  let names: RecipeNames;
  const line = (l: string) => readmeLine(l, names);

  before(async () => {
    await requireTools('qemu-img');
    tmp = await mkdtemp('/var/tmp/vircptfs-rcovl-');
    bin = await binDir(tmp);
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 32 * MiB, files: { 'root/data.bin': randomBytes(3 * MiB) } }] });
    await vm.write('sda', 20 * MiB, 1 * MiB, 0x5a);
    const r = await vircpt(['-d', vm.name, 'create', '--name', 'c1']);
    assert.equal(r.code, 0, r.stderr);
    await vm.write('sda', 28 * MiB, 256 * 1024, 0x6b);
    m = await mountFs({ options: [`domain=${vm.name}`, `idle=${IDLE_S}`] });
    names = { mount: m.dir, domain: vm.name, checkpoints: ['c1'], overlay: path.join(tmp, 'sda-overlay.qcow2') };
  });
  after(async () => {
    await m?.cleanup();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('holds the export with fd 9; the overlay reads the point in time, not later guest writes', async () => {
    const before = path.join(tmp, 'before.raw');
    const later = path.join(tmp, 'later.raw');
    await imageToRaw(vm.image('sda'), before); // paused VM: what the export will show
    // The README's lines; in place of booting the overlay, qemu-img compares it with the disk
    // before and after a guest write made while the overlay lives.
    const script = [
      line('M=/mnt/vircptfs-demo/vircptfs-demo/demo-1'),
      line('exec 9< $M/sda.raw'),
      line('qemu-img create -f qcow2 -b $M/sda.raw -F raw /tmp/sda-overlay.qcow2'),
      `echo ${READY}; read -r _`,
      `qemu-img compare -f qcow2 -F raw ${names.overlay} ${before}; echo "before=$?"`,
      `qemu-img compare -f qcow2 -F raw ${names.overlay} ${later}; echo "later=$?"`,
      line('rm /tmp/sda-overlay.qcow2; exec 9<&-'),
    ].join('\n');
    const child = bash(script, { bin, input: 'pipe' });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    while (!out.includes(READY)) {
      assert.equal(child.exitCode, null, `recipe ended early: ${out}`);
      await sleep(50);
    }
    assert.equal((await stat(names.overlay!)).isFile(), true, 'overlay created');
    // Past the idle time the export is still up: fd 9 holds it.
    await sleep((IDLE_S + 1) * 1000);
    assert.notEqual(await vm.jobType(), 'None', 'fd 9 keeps the export');
    await vm.write('sda', 0, 2 * MiB, 0x7c); // the live disk changes under the overlay's backing
    await vm.write('sda', 20 * MiB + 4096, 4096, 0x00);
    await imageToRaw(vm.image('sda'), later);
    child.stdin!.end('\n');
    const r = await child;

    assert.equal(r.exitCode, 0, `${String(r.stdout)}\n${String(r.stderr)}`);
    assert.match(String(r.stdout), /Images are identical\.\nbefore=0\n/, 'the overlay reads the export point in time');
    assert.match(String(r.stdout), /Content mismatch at offset 0!\nlater=1$/, 'later writes do not show through');
    await assert.rejects(stat(names.overlay!), { code: 'ENOENT' }, 'the recipe removed the overlay');
    await waitReleased(vm); // fd 9 closed: the export goes after the idle time
  });

  it('umount leaves nothing', async () => {
    await bashOk(line('umount /mnt/vircptfs-demo'), { bin });
    assert.deepEqual(await m.waitExit(), { code: 0, signal: null }, m.stderr);
    await assertNothingLeft(vm, m.dir);
  });
});
