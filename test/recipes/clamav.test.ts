// README recipe "Agentless antivirus scan": the checkpoint's sda.raw loop-mounted read-only by
// partition offset, scanned by clamscan with an offline signature database built by sigtool, and
// everything gone afterwards (loop device, both mounts, the export).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { vircpt } from '../lab/cli.js';
import { Lab, type LabVm } from '../lab/lab.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { requireTools } from '../lab/tools.js';
import {
  assertNothingLeft, bash, waitNoLoops, bashOk, binDir, loopsUnder, MiB, mountsUnder, readmeLine, waitReleased, type RecipeNames,
} from './helpers.js';

// The standard antivirus test file, in two halves so this repository never holds it whole.
const EICAR = 'X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-' + 'STANDARD-ANTIVIRUS-TEST-FILE!$H+H*';
const EICAR_IN_GUEST = 'home/user/Downloads/eicar.com';
/** clamscan's exit code when it found a virus (clamscan(1)). */
const CLAMSCAN_FOUND = 1;
const IDLE_S = 1;

describe('README recipe: agentless antivirus scan', () => {
  const lab = new Lab('rcav');
  let vm: LabVm;
  let m: FsMount;
  let tmp: string;
  let bin: string;
  let names: RecipeNames;
  // The README's lines, verbatim; readmeLine() checks each is still in README.md.
  const line = (l: string) => readmeLine(l, names);
  const setM = () => line('M=/mnt/vircptfs-demo/vircptfs-demo/demo-1');

  before(async () => {
    await requireTools('clamscan', 'sigtool', 'losetup', 'sfdisk');
    tmp = await mkdtemp('/var/tmp/vircptfs-rcav-');
    bin = await binDir(tmp);
    vm = await lab.vm({
      disks: [{
        target: 'sda', bus: 'sata', size: 64 * MiB, files: {
          'etc/hostname': 'guest\n',
          'home/user/notes.txt': 'nothing to see here\n',
          [EICAR_IN_GUEST]: EICAR,
          'var/lib/app/data.bin': randomBytes(300 * 1024),
        },
      }],
    });
    const r = await vircpt(['-d', vm.name, 'create', '--name', 'c1']);
    assert.equal(r.code, 0, r.stderr);
    m = await mountFs({ options: [`domain=${vm.name}`, `idle=${IDLE_S}`] });
    const guest = `/tmp/vircptfs-rcav-guest-${process.pid}-${randomBytes(3).toString('hex')}`;
    names = { mount: m.dir, domain: vm.name, checkpoints: ['c1'], guest };
  });
  after(async () => {
    if (names && (await mountsUnder(names.guest!)).length > 0) await execa('umount', ['-l', names.guest!], { reject: false });
    if (names) await rmdir(names.guest!).catch(() => {});
    await m?.cleanup();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('finds the partition offset with sfdisk -d $M/sda.raw', async () => {
    const r = await bashOk([setM(), 'sfdisk -d $M/sda.raw'].join('\n'), { bin });
    assert.match(r.stdout, /^label: gpt$/m);
    assert.match(r.stdout, /sda\.raw1 : start=\s*2048,/, r.stdout);
  });

  it('loop-mounts the partition, clamscan -d test.hdb -r finds the EICAR file, then nothing is left', async () => {
    const guest = names.guest!;
    await writeFile(path.join(tmp, 'eicar-sample'), EICAR);
    await bashOk('sigtool --md5 eicar-sample > test.hdb', { bin, cwd: tmp });

    await bashOk([
      setM(),
      line('mkdir -p /mnt/guest'),
      line('mount -o ro,noload,offset=$((2048*512)) $M/sda.raw /mnt/guest'),
    ].join('\n'), { bin });
    assert.equal((await loopsUnder(m.dir)).length, 1, 'one loop device on the checkpoint file');
    assert.notEqual(await vm.jobType(), 'None', 'the loop mount opened the export');

    const scan = await bash(line('clamscan -d test.hdb -r /mnt/guest'), { bin, cwd: tmp });
    assert.equal(scan.exitCode, CLAMSCAN_FOUND, `clamscan: ${String(scan.stdout)}\n${String(scan.stderr)}`);
    const found = String(scan.stdout).split('\n').filter((l) => l.endsWith(' FOUND'));
    assert.deepEqual(found, [`${guest}/${EICAR_IN_GUEST}: eicar-sample.UNOFFICIAL FOUND`]);
    assert.match(String(scan.stdout), /^Scanned files: 4$/m, 'every guest file was read');

    // The loop device holds sda.raw open: the export outlives the idle time.
    await sleep((IDLE_S + 1) * 1000);
    assert.notEqual(await vm.jobType(), 'None', 'export kept while the loop mount is up');

    await bashOk(line('umount /mnt/guest'), { bin });
    await waitNoLoops(m.dir);
    await waitReleased(vm);
    await bashOk(line('umount /mnt/vircptfs-demo'), { bin });
    const exit = await m.waitExit();
    assert.deepEqual(exit, { code: 0, signal: null }, m.stderr);
    await assertNothingLeft(vm, m.dir, guest);
  });
});
