// Bad input at the edges, on a real mount: domain names that libvirt 9.0 accepts and a shell
// would not (a leading dash or space, a trailing space or tab, quotes, a backslash, `%2f`,
// unicode; two domains whose names differ only by a trailing space), checkpoint names at
// libvirt's limits (a leading dash, 247 bytes). Each lists and reads its own bytes, and no path
// reaches another domain's. Components longer than 255 bytes are ENAMETOOLONG; huge, odd-sized
// and past-the-end reads.
import assert from 'node:assert/strict';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { assertSameBytes, dirtyOf, dirtyRanges, MiB, reference, rejectsWith, waitReleased, type DirtyMapJson } from './helpers.js';

const SIZE = 4 * MiB;
/** libvirt 9.0 saves a checkpoint through <name>.xml.new: 247 bytes is the longest name it keeps. */
const LONG_CHECKPOINT = `L${'o'.repeat(245)}g`;

interface Case { vm: LabVm; checkpoints: string[]; pattern: number; dirty: Array<[number, number]> }

async function preadAll(file: string, length: number, position: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    let got = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, got, length - got, position + got);
      if (bytesRead === 0 || got + bytesRead === length) return buf.subarray(0, got + bytesRead);
      got += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

describe('odd domain and checkpoint names, long names, odd reads', () => {
  const lab = new Lab('names');
  const cases: Case[] = [];
  const refs = new Map<LabVm, Buffer>();
  let m: FsMount;

  before(async () => {
    const specs: Array<{ name: (p: string) => string; checkpoints: string[] }> = [
      { name: (p) => `-${p} 'q"&\\%2f ünï`, checkpoints: ['-c1', LONG_CHECKPOINT] },
      { name: (p) => ` ${p}\t`, checkpoints: ['c.1_x'] },
      { name: (p) => `${p}-x`, checkpoints: ['c1'] },
      { name: (p) => `${p}-x `, checkpoints: ['c1'] }, // trimmed, it would be the one above
    ];
    for (const [i, spec] of specs.entries()) {
      const vm = await lab.vm({ name: spec.name, disks: [{ target: 'sda', bus: 'sata', size: SIZE }] });
      const pattern = 0x31 + i;
      await vm.write('sda', 0, MiB, pattern); // whose disk it is, in its first MiB
      for (const cp of spec.checkpoints) await virsh('checkpoint-create-as', '--', vm.name, cp);
      const dirty: Array<[number, number]> = [[MiB + i * 512 * 1024, 64 * 1024]];
      for (const [off, len] of dirty) await vm.write('sda', off, len, 0xe0 + i);
      cases.push({ vm, checkpoints: spec.checkpoints, pattern, dirty });
      refs.set(vm, await reference(vm, 'sda', lab.dir, `-${i}`));
    }
    m = await mountFs({ options: [...cases.map((c) => `domain=${c.vm.name}`), 'nofreeze', 'idle=2'] });
  });
  after(async () => {
    await m?.cleanup();
    await lab.cleanup();
  });

  it('lists every odd name exactly as libvirt has it', async () => {
    assert.deepEqual((await readdir(m.dir)).sort(), cases.map((c) => c.vm.name).sort());
    for (const c of cases) {
      assert.deepEqual((await readdir(m.path(c.vm.name))).sort(), [...c.checkpoints].sort(), JSON.stringify(c.vm.name));
      for (const cp of c.checkpoints) assert.deepEqual((await readdir(m.path(c.vm.name, cp))).sort(), ['dirty-map.json', 'sda.raw']);
    }
  });

  it('each domain reads its own disk and dirty map, whatever its name', async () => {
    for (const c of cases) {
      const what = JSON.stringify(c.vm.name);
      const bytes = await readFile(m.path(c.vm.name, c.checkpoints[0]!, 'sda.raw'));
      assertSameBytes(bytes, refs.get(c.vm)!, what);
      assert.equal(bytes[0], c.pattern, `${what}: its own first MiB`);
      for (const [i, cp] of c.checkpoints.entries()) {
        // A running domain serves the map of one checkpoint per export (the others are EBUSY).
        if (i > 0) await waitReleased(c.vm);
        const map = JSON.parse(await readFile(m.path(c.vm.name, cp, 'dirty-map.json'), 'utf8')) as DirtyMapJson;
        assert.equal(map.domain, c.vm.name, `${what}/${cp}: the map names the domain exactly`);
        assert.equal(map.checkpoint, cp);
        assert.deepEqual(dirtyOf(map.disks.sda!.extents), dirtyRanges(c.dirty), `${what}/${cp}: its own writes`);
      }
    }
  });

  it('names a path cannot lead anywhere else: trimmed, escaped or unknown ones are ENOENT', async () => {
    const [odd, spaced, plain] = cases.map((c) => c.vm.name);
    const nowhere = [
      odd!.trim().slice(1), // without the dash
      spaced!.trim(), // without the leading space and trailing tab
      `${plain} `.replace(/-x $/, '-x  '), // two trailing spaces
      odd!.replace('%2f', '/').split('/')[0]!,
      'c1', '..c1', 'sda.raw',
    ];
    for (const name of nowhere) await rejectsWith(stat(m.path(name)), 'ENOENT', JSON.stringify(name));
    await rejectsWith(stat(m.path(plain!, 'c1', 'vda.raw')), 'ENOENT', 'a disk the domain does not have');
    await rejectsWith(stat(m.path(plain!, 'c1', 'sda.raw', 'x')), 'ENOTDIR', 'below a file');
  });

  it('a component longer than 255 bytes is ENAMETOOLONG at every level; 255 bytes is ENOENT', async () => {
    const { vm, checkpoints } = cases[0]!;
    const long = 'x'.repeat(256);
    const wide = 'ä'.repeat(128); // 256 bytes in 128 characters
    for (const p of [[long], [wide], [vm.name, long], [vm.name, checkpoints[0]!, long], [vm.name, checkpoints[0]!, `${'x'.repeat(252)}.raw`]]) {
      await rejectsWith(stat(m.path(...p)), 'ENAMETOOLONG', `${p.map((x) => x.length).join('/')}`);
      await rejectsWith(readdir(m.path(...p)), 'ENAMETOOLONG', 'readdir');
      await rejectsWith(open(m.path(...p), 'r'), 'ENAMETOOLONG', 'open');
    }
    await rejectsWith(stat(m.path('y'.repeat(255))), 'ENOENT', '255 bytes');
    assert.equal(Buffer.byteLength(LONG_CHECKPOINT), 247);
    assert.equal((await stat(m.path(vm.name, LONG_CHECKPOINT, 'sda.raw'))).size, SIZE, 'the 247-byte checkpoint serves');
  });

  it('huge, odd-sized and past-the-end reads of a disk and a dirty map', async () => {
    const { vm, checkpoints } = cases[2]!;
    const ref = refs.get(vm)!;
    const disk = m.path(vm.name, checkpoints[0]!, 'sda.raw');
    assertSameBytes(await preadAll(disk, 64 * MiB, 0), ref, 'one 64 MiB read of a 4 MiB disk');
    assertSameBytes(await preadAll(disk, 64 * MiB, 1), ref.subarray(1), 'a huge read from offset 1');
    for (const [len, pos] of [[4097, 12345], [1, SIZE - 1], [3 * MiB + 7, MiB - 3], [131073, 65535]] as const) {
      assertSameBytes(await preadAll(disk, len, pos), ref.subarray(pos, pos + len), `${len} bytes at ${pos}`);
    }
    for (const pos of [SIZE, SIZE + 1, 2 ** 40]) assert.equal((await preadAll(disk, 4096, pos)).length, 0, `read at ${pos}: 0 bytes`);
    const mapFile = m.path(vm.name, checkpoints[0]!, 'dirty-map.json');
    const whole = await readFile(mapFile);
    assert.ok(whole.length > 0);
    assertSameBytes(await preadAll(mapFile, 64 * MiB, 0), whole, 'a huge read of the map');
    assertSameBytes(await preadAll(mapFile, 7, 3), whole.subarray(3, 10), '7 bytes at 3 of the map');
    assert.equal((await preadAll(mapFile, 4096, whole.length)).length, 0, 'the map at its end: 0 bytes');
    assert.equal((await preadAll(mapFile, 4096, 2 ** 40)).length, 0, 'the map far past its end: 0 bytes');
  });
});
