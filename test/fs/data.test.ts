// One mount over two lab domains, one running (pull-mode backup job) and one shut off
// (qemu-nbd): what the tree lists without starting anything, read-only errors, every disk's
// bytes, parallel readers, and dirty-map.json after known guest writes.
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { chmod, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, truncate, unlink, utimes, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { requireTools, run } from '../lab/tools.js';
import {
  assertCovers, assertSameBytes, ATTR_TIMEOUT_MS, checkpoint, dirtyOf, dirtyRanges, exported, KiB, MiB, reference, rejectsWith, waitReleased,
  type DirtyMapJson,
} from './helpers.js';

/** The catalog caches libvirt's listing 2 s, the kernel its entries 1 s. */
const LISTING_DELAY_MS = 5000;

async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + LISTING_DELAY_MS;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${LISTING_DELAY_MS} ms`);
    await sleep(100);
  }
}

/** Prints {size, data: [[offset, length]...], pastEnd} of a file as lseek SEEK_DATA/SEEK_HOLE see it. */
const SEEK_SCRIPT = `
import errno, json, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size, off, data = os.fstat(fd).st_size, 0, []
while off < size:
    try:
        start = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO: raise
        break
    off = os.lseek(fd, start, os.SEEK_HOLE)
    data.append([start, off - start])
try:
    os.lseek(fd, size, os.SEEK_DATA)
    past = 'no error'
except OSError as e:
    past = errno.errorcode[e.errno]
print(json.dumps({'size': size, 'data': data, 'pastEnd': past}))
`;

type Writes = Record<string, Array<[number, number]>>;

describe('vircptfs over a running and a shut-off domain', () => {
  const lab = new Lab('fsdata');
  let a: LabVm; // running (paused): a backup job serves it
  let b: LabVm; // shut off: qemu-nbd serves it
  let m: FsMount;
  let tmp: string;
  const refs = new Map<string, Buffer>();
  // What each checkpoint's map must show: the writes made after it.
  const since: Record<string, Writes> = {};
  const file = (vm: LabVm, ...parts: string[]) => m.path(vm.name, ...parts);
  const ref = (vm: LabVm, target: string) => refs.get(`${vm.name}/${target}`)!;

  async function write(vm: LabVm, target: string, offset: number, length: number, pattern: number): Promise<void> {
    await vm.write(target, offset, length, pattern);
    for (const [cp, writes] of Object.entries(since)) if (cp.startsWith(`${vm.name}/`)) (writes[target] ??= []).push([offset, length]);
  }
  async function mark(vm: LabVm, name: string): Promise<void> {
    await checkpoint(vm, name);
    since[`${vm.name}/${name}`] = {};
  }
  const expected = (vm: LabVm, cp: string, target: string) => dirtyRanges(since[`${vm.name}/${cp}`]![target] ?? []);

  before(async () => {
    await requireTools('jq', 'qemu-nbd');
    tmp = await mkdtemp('/var/tmp/vircptfs-fsdata-');
    [a, b] = await Promise.all([
      lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 64 * MiB }, { target: 'vdb', size: 32 * MiB }] }),
      lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 32 * MiB }, { target: 'vdb', size: 16 * MiB }] }),
    ]);
    await write(a, 'sda', 0, 4 * MiB, 0x11); // before any checkpoint: data, but clean
    await mark(a, 'c1');
    await write(a, 'sda', 1 * MiB, 2 * MiB, 0xab);
    await write(a, 'vdb', 8 * MiB, 64 * KiB, 0xcd);
    await write(a, 'vdb', 100_000, 1000, 0xce); // not aligned: dirty at the 64 KiB grain
    await mark(a, 'c2');
    await write(a, 'sda', 10 * MiB, 128 * KiB, 0x22);
    await write(a, 'vdb', 20 * MiB + 1, 3, 0x33);

    await write(b, 'sda', 0, 1 * MiB, 0x44);
    await mark(b, 'b1');
    await write(b, 'sda', 2 * MiB, 1 * MiB, 0x55);
    await mark(b, 'b2');
    await write(b, 'vdb', 5 * MiB, 64 * KiB, 0x66);
    await write(b, 'sda', 3 * MiB + 512 * KiB, 4 * KiB, 0x77);
    await b.destroy(); // QEMU stores the persistent bitmaps in the qcow2 as it closes

    for (const vm of [a, b]) {
      for (const d of vm.disks) refs.set(`${vm.name}/${d.target}`, await reference(vm, d.target, tmp));
    }
    m = await mountFs({ options: [`domain=${a.name}`, `domain=${b.name}`, 'idle=1'] });
  });
  after(async () => {
    await m?.cleanup();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('lists domains, checkpoints and files with libvirt sizes; ls -lR, find, du and stat start no export', async () => {
    assert.deepEqual((await readdir(m.dir)).sort(), [a.name, b.name].sort());
    assert.deepEqual((await readdir(file(a))).sort(), ['c1', 'c2']);
    assert.deepEqual((await readdir(file(b))).sort(), ['b1', 'b2']);
    assert.deepEqual((await readdir(file(a, 'c1'))).sort(), ['dirty-map.json', 'sda.raw', 'vdb.raw']);
    for (const vm of [a, b]) {
      for (const d of vm.disks) {
        const st = await stat(file(vm, vm === a ? 'c2' : 'b2', `${d.target}.raw`));
        assert.ok(st.isFile());
        assert.equal(st.size, d.size, `${vm.name}/${d.target}: size from libvirt`);
        assert.equal(st.mode & 0o777, 0o400, 'the default umask 0077: the owner (root) only');
        assert.equal(st.blksize, 1024 * 1024, 'preferred I/O size: one cache block, so cat and cp read 1 MiB at a time');
      }
    }
    const ls = await run('ls', ['-lR', m.dir]);
    assert.match(ls, /sda\.raw/);
    const found = (await run('find', [m.dir])).trim().split('\n').sort();
    const want = [m.dir, file(a), file(b)];
    for (const cp of ['c1', 'c2']) want.push(file(a, cp), ...['dirty-map.json', 'sda.raw', 'vdb.raw'].map((f) => file(a, cp, f)));
    for (const cp of ['b1', 'b2']) want.push(file(b, cp), ...['dirty-map.json', 'sda.raw', 'vdb.raw'].map((f) => file(b, cp, f)));
    assert.deepEqual(found, want.sort());
    await run('du', ['-a', m.dir]);
    await run('stat', [file(a, 'c1', 'dirty-map.json'), file(b, 'b1', 'dirty-map.json')]);
    assert.equal(await a.jobType(), 'None', 'no backup job started by listing');
    assert.equal(await exported(b), false, 'no qemu-nbd started by listing');
  });

  it('is read-only (EROFS) and unknown paths are ENOENT', async () => {
    const disk = file(a, 'c1', 'sda.raw');
    await rejectsWith(open(disk, 'r+'), 'EROFS', 'open for writing');
    await rejectsWith(open(disk, 'w'), 'EROFS', 'open with O_TRUNC');
    await rejectsWith(writeFile(file(a, 'c1', 'new.txt'), 'x'), 'EROFS', 'create');
    await rejectsWith(truncate(disk, 0), 'EROFS', 'truncate');
    await rejectsWith(chmod(disk, 0o666), 'EROFS', 'chmod');
    await rejectsWith(utimes(disk, new Date(), new Date()), 'EROFS', 'utimes');
    await rejectsWith(mkdir(file(a, 'c1', 'dir')), 'EROFS', 'mkdir');
    await rejectsWith(unlink(disk), 'EROFS', 'unlink');
    await rejectsWith(rename(disk, file(a, 'c1', 'x.raw')), 'EROFS', 'rename');
    for (const p of [m.path('no-such-domain'), file(a, 'no-such-checkpoint'), file(a, 'c1', 'sdz.raw'),
      file(a, 'c1', 'notes.txt')]) {
      await rejectsWith(stat(p), 'ENOENT', `stat ${p}`);
    }
    await rejectsWith(stat(file(a, 'c1', 'sda.raw', 'x')), 'ENOTDIR', 'a path under a file');
    await rejectsWith(open(file(a, 'c1', 'sdz.raw'), 'r'), 'ENOENT', 'open of a disk the checkpoint lacks');
    await rejectsWith(readdir(file(b, 'nope')), 'ENOENT', 'readdir of an unknown checkpoint');
    assert.equal(await a.jobType(), 'None');
    assert.equal(await exported(b), false);
  });

  it('serves every disk of both domains at once, byte-identical to the disks', async () => {
    const handles: Array<[string, FileHandle, Buffer]> = [];
    try {
      for (const [vm, cp] of [[a, 'c1'], [b, 'b1']] as const) {
        for (const d of vm.disks) handles.push([`${vm.name}/${d.target}`, await open(file(vm, cp, `${d.target}.raw`)), ref(vm, d.target)]);
      }
      assert.equal(await a.jobType(), 'Unbounded', 'a backup job serves the running domain');
      assert.ok(await exported(b), 'qemu-nbd serves the shut-off domain');
      await Promise.all(handles.map(async ([what, fh, want]) => assertSameBytes(await fh.readFile(), want, what)));
    } finally {
      await Promise.all(handles.map(([, fh]) => fh.close()));
    }
    await Promise.all([waitReleased(a), waitReleased(b)]);
  });

  it('gives 6 parallel readers at random offsets the same bytes as the disks', async () => {
    const readers: Array<[LabVm, string, string]> = [
      [a, 'c2', 'sda'], [a, 'c2', 'sda'], [a, 'c2', 'sda'], [a, 'c1', 'vdb'], [b, 'b2', 'sda'], [b, 'b1', 'vdb'],
    ];
    let bytes = 0;
    await Promise.all(readers.map(async ([vm, cp, target], r) => {
      const want = ref(vm, target);
      await using fh = await open(file(vm, cp, `${target}.raw`));
      for (let i = 0; i < 40; i++) {
        const length = randomInt(1, 512 * KiB);
        const offset = i % 10 === 9 ? want.length - randomInt(1, length + 1) : randomInt(0, want.length);
        const buf = Buffer.alloc(length);
        const { bytesRead } = await fh.read(buf, 0, length, offset);
        const end = Math.min(want.length, offset + length);
        assert.equal(bytesRead, end - offset, `reader ${r}: short read at ${offset}+${length}`);
        assertSameBytes(buf.subarray(0, bytesRead), want.subarray(offset, end), `reader ${r} ${vm.name}/${target} at ${offset}+${length}`);
        bytes += bytesRead;
      }
    }));
    assert.ok(bytes > 0);
    await Promise.all([waitReleased(a), waitReleased(b)]);
  });

  it('dirty-map.json lists exactly the written ranges; works with cat, cp and jq', async () => {
    const map = file(a, 'c1', 'dirty-map.json');
    await using disk = await open(file(a, 'c1', 'sda.raw')); // holds the export: one point in time
    const text = String((await execa('cat', [map], { stripFinalNewline: false })).stdout);
    const copy = path.join(tmp, 'map.json');
    await run('cp', [map, copy]);
    assert.equal(await readFile(copy, 'utf8'), text, 'cp copies what cat reads');
    const doc = JSON.parse(text) as DirtyMapJson;
    assert.equal(doc.domain, a.name);
    assert.equal(doc.checkpoint, 'c1');
    // The kernel may answer fstat from attributes it cached (attr_timeout, 1 s) before this
    // open started the export (README): past that second it must show the export's start.
    await sleep(ATTR_TIMEOUT_MS + 100);
    assert.equal(new Date(doc.exportedAt).getTime(), (await disk.stat()).mtimeMs, 'the map is of the open file\'s point in time');
    assert.deepEqual(Object.keys(doc.disks), ['sda', 'vdb']);
    for (const d of a.disks) {
      assert.equal(doc.disks[d.target]!.size, d.size);
      assertCovers(doc.disks[d.target]!.extents, d.size, `c1 ${d.target}`);
      assert.deepEqual(dirtyOf(doc.disks[d.target]!.extents), expected(a, 'c1', d.target), `c1 ${d.target} dirty ranges`);
    }
    await run('jq', ['-e', '.disks.vdb.size == 33554432 and (.disks.sda.extents | map(.length) | add) == 67108864', map]);
    await sleep(ATTR_TIMEOUT_MS); // the kernel's attribute cache still holds the size seen at lookup
    assert.equal((await stat(map)).size, Buffer.byteLength(text), 'stat shows the generated size');

    // Another checkpoint of the running domain needs its own export: busy while c1's is held.
    await rejectsWith(readFile(file(a, 'c2', 'dirty-map.json')), 'EBUSY', 'c2 map while exported at c1');
    const busy = await execa('cat', [file(a, 'c2', 'dirty-map.json')], { reject: false });
    assert.notEqual(busy.exitCode, 0);
    assert.match(String(busy.stderr), /busy/i);
    assert.equal(await a.jobType(), 'Unbounded', 'the export at c1 still runs');
    // Disk files of every checkpoint are the same disk at that same point in time.
    assertSameBytes(await readFile(file(a, 'c2', 'vdb.raw')), ref(a, 'vdb'), 'c2 vdb.raw while exported at c1');
    assertSameBytes((await disk.read(Buffer.alloc(MiB), 0, MiB, MiB)).buffer, ref(a, 'sda').subarray(MiB, 2 * MiB), 'still reads');
    await disk.close();
    await waitReleased(a);

    const doc2 = JSON.parse(await readFile(file(a, 'c2', 'dirty-map.json'), 'utf8')) as DirtyMapJson;
    assert.equal(doc2.checkpoint, 'c2');
    for (const d of a.disks) {
      assertCovers(doc2.disks[d.target]!.extents, d.size, `c2 ${d.target}`);
      assert.deepEqual(dirtyOf(doc2.disks[d.target]!.extents), expected(a, 'c2', d.target), `c2 ${d.target} dirty ranges`);
    }
    await waitReleased(a);
  });

  it('SEEK_DATA/SEEK_HOLE skip what reads as zeros: cp copies only data, byte-identical and sparse', async () => {
    // Written data must be inside the data segments, every hole must read as zeros, and the
    // holes must be most of the disk (64 MiB with 6 MiB written at most).
    for (const [vm, cp] of [[a, 'c2'], [b, 'b2']] as const) {
      const raw = file(vm, cp, 'sda.raw');
      const want = ref(vm, 'sda');
      const layout = JSON.parse(await run('python3', ['-c', SEEK_SCRIPT, raw])) as { size: number; data: Array<[number, number]>; pastEnd: string };
      assert.equal(layout.size, want.length);
      assert.equal(layout.pastEnd, 'ENXIO', `${vm.name}: SEEK_DATA at the end`);
      let at = 0;
      let dataBytes = 0;
      for (const [offset, length] of [...layout.data, [want.length, 0] as [number, number]]) {
        assert.ok(offset >= at && length >= 0, `${vm.name}: segments sorted and apart`);
        assert.ok(want.subarray(at, offset).every((byte) => byte === 0), `${vm.name}: hole ${at}-${offset} reads as zeros in the disk`);
        at = offset + length;
        dataBytes += length;
      }
      assert.ok(dataBytes > 0 && dataBytes <= want.length / 4, `${vm.name}: ${dataBytes} bytes of data in ${want.length}`);
      const out = path.join(tmp, `${vm.name}-seek-copy.raw`);
      await run('cp', ['--sparse=auto', raw, out]);
      assertSameBytes(await readFile(out), want, `${vm.name}: cp of sda.raw`);
      const allocated = (await stat(out)).blocks * 512;
      assert.ok(allocated <= dataBytes + MiB, `${vm.name}: cp wrote ${allocated} bytes for ${dataBytes} of data`);
      await rm(out);
    }
    await Promise.all([waitReleased(a), waitReleased(b)]);
  });

  it('shows a new checkpoint within seconds and forgets a deleted one', async () => {
    await checkpoint(a, 'c3');
    await until(() => readdir(file(a)).then((l) => l.includes('c3')), 'c3 listed');
    assert.deepEqual((await readdir(file(a, 'c3'))).sort(), ['dirty-map.json', 'sda.raw', 'vdb.raw']);
    await virsh('checkpoint-delete', a.name, 'c3');
    await until(() => stat(file(a, 'c3')).then(() => false, (e: NodeJS.ErrnoException) => e.code === 'ENOENT'), 'c3 gone');
    assert.equal(await a.jobType(), 'None');
  });

  it('a shut-off domain serves the maps of both checkpoints at once', async () => {
    await using first = await open(file(b, 'b1', 'dirty-map.json'));
    const doc1 = JSON.parse((await first.readFile()).toString()) as DirtyMapJson;
    const doc2 = JSON.parse(await readFile(file(b, 'b2', 'dirty-map.json'), 'utf8')) as DirtyMapJson;
    assert.equal(doc1.exportedAt, doc2.exportedAt, 'one export, one point in time');
    for (const [doc, cp] of [[doc1, 'b1'], [doc2, 'b2']] as const) {
      for (const d of b.disks) {
        assertCovers(doc.disks[d.target]!.extents, d.size, `${cp} ${d.target}`);
        assert.deepEqual(dirtyOf(doc.disks[d.target]!.extents), expected(b, cp, d.target), `${cp} ${d.target} dirty ranges`);
      }
    }
    assertSameBytes(await readFile(file(b, 'b2', 'sda.raw')), ref(b, 'sda'), 'b2 sda.raw next to the maps');
    await first.close();
    await waitReleased(b);
  });
});
