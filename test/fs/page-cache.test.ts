// The page-cache policy of disk files (-o page_cache=, docs/read-path.md), seen as a user sees it:
// fincore(1) counts the file's pages in the kernel's cache, a shared mmap (refused with ENODEV
// by a direct_io open) tells how a file was opened, and the bytes read are the checkpoint's.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { Lab, type LabVm } from '../lab/lab.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { requireTools } from '../lab/tools.js';
import { assertSameBytes, checkpoint, MiB, reference, waitReleased } from './helpers.js';

const SIZE = 32 * MiB;

/** Bytes of `file` in the page cache (fincore's own open is one more open, which reads nothing). */
async function resident(file: string): Promise<number> {
  return Number((await execa('fincore', ['--bytes', '--noheadings', '--output', 'RES', file])).stdout.trim());
}

/**
 * Reads the file whole (bytes checked) and returns how much of it the page cache then holds. A
 * pass that leaves it all there is what is asked; another process dropping the machine's caches
 * (a benchmark's drop_caches) between the read and the count shows as less, so up to 3 passes.
 */
async function cachedPass(file: string, ref: Buffer): Promise<number> {
  let held = 0;
  for (let pass = 0; pass < 3 && held < ref.length; pass++) {
    assertSameBytes(await readFile(file), ref, `pass ${pass}`);
    held = await resident(file);
    if (held === 0) break; // nothing at all: not a cached open, no retry hides that
  }
  return held;
}

/** `ok`, or why a read-only shared mmap of `file` failed (a new open of it, which reads nothing). */
async function sharedMmap(file: string): Promise<string> {
  const r = await execa('python3', ['-c', MMAP_PY, file], { reject: false, env: { LC_ALL: 'C' } });
  return r.exitCode === 0 ? String(r.stdout).trim() : String(r.stderr).trim().split('\n').at(-1)!;
}
const MMAP_PY = 'import mmap, sys\nwith open(sys.argv[1], "rb") as f:\n  mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ).close()\nprint("ok")';

describe('vircptfs page_cache=auto|always|never', () => {
  const lab = new Lab('fspc');
  let vm: LabVm;
  let tmp: string;
  let ref: Buffer;
  let m: FsMount | undefined;
  const disk = () => m!.path(vm.name, 'c', 'sda.raw');
  const remount = async (policy?: string) => {
    await m?.cleanup();
    m = await mountFs({ options: [`domain=${vm.name}`, 'idle=1', ...(policy ? [`page_cache=${policy}`] : [])] });
  };

  before(async () => {
    await requireTools('fincore', 'python3');
    tmp = await mkdtemp('/var/tmp/vircptfs-fspc-');
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: SIZE }] });
    await vm.write('sda', 0, 8 * MiB, 0x3c);
    await vm.write('sda', 20 * MiB, 4 * MiB, 0xc3);
    await checkpoint(vm, 'c');
    ref = await reference(vm, 'sda', tmp);
  });
  after(async () => {
    await m?.cleanup();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('auto (the default): a first pass goes past the page cache, a reader that comes back fills it; a new export starts over', async () => {
    await remount();
    assert.match(await sharedMmap(disk()), /No such device/, 'the first open of the export is direct_io');
    assertSameBytes(await readFile(disk()), ref, 'first pass');
    assert.equal(await sharedMmap(disk()), 'ok', 'a reader that comes back uses the page cache');
    assert.equal(await resident(disk()), 0, 'the first pass left nothing in the page cache');
    assert.equal(await cachedPass(disk(), ref), SIZE, 'the second pass is in the page cache');
    assertSameBytes(await readFile(disk()), ref, 'third pass, from the page cache');

    await waitReleased(vm);
    assert.match(await sharedMmap(disk()), /No such device/, 'a new export: its first open is direct_io again');
    assertSameBytes(await readFile(disk()), ref, 'first pass of the new export');
    assert.equal(await sharedMmap(disk()), 'ok');
  });

  it('always: the first pass fills the page cache', async () => {
    await remount('always');
    assert.equal(await sharedMmap(disk()), 'ok');
    assert.equal(await resident(disk()), 0);
    assert.equal(await cachedPass(disk(), ref), SIZE, 'the first pass is in the page cache');
  });

  it('never (also spelled direct_io): no pass uses the page cache', async () => {
    await remount('never');
    assertSameBytes(await readFile(disk()), ref, 'first pass');
    assertSameBytes(await readFile(disk()), ref, 'second pass');
    assert.match(await sharedMmap(disk()), /No such device/);
  });
});
