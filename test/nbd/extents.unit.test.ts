// walkExtents over scripted server answers: the short and long answers that proto.md allows
// but that qemu-nbd and nbdkit rarely produce on demand (the real servers are compared with
// nbdinfo in the client tests).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import { walkExtents, mergeExtents, type Extent, type ExtentWalk } from '../../src/nbd/extents.js';

/** A disk described by extents; each answer covers at most `maxExtents` of them from the asked offset. */
function scriptedQuery(disk: [number, number][], maxExtents: number, asked: [number, number][]) {
  return async (offset: number, length: number): Promise<Uint32Array> => {
    asked.push([offset, length]);
    const out: number[] = [];
    let at = 0;
    for (const [len, flags] of disk) {
      const end = at + len;
      if (end > offset && out.length / 2 < maxExtents) out.push(end - Math.max(at, offset), flags);
      at = end;
    }
    return Uint32Array.from(out);
  };
}

async function collect(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

const DISK: [number, number][] = [[4096, 0], [4096, 0], [8192, 3], [512, 1], [3584, 1], [12288, 0]];
const SIZE = DISK.reduce((n, [len]) => n + len, 0);
const walk = (offset: number, length: number, over: Partial<ExtentWalk> = {}): ExtentWalk =>
  ({ offset, length, alignment: 512, maxRequest: SIZE, size: SIZE, ...over });

describe('walkExtents', () => {
  it('asks again from where a short answer stopped and merges equal neighbours', async () => {
    const asked: [number, number][] = [];
    const extents = await collect(walkExtents(scriptedQuery(DISK, 1, asked), walk(0, SIZE)));
    assert.deepEqual(extents, [
      { offset: 0, length: 8192, flags: 0 }, { offset: 8192, length: 8192, flags: 3 },
      { offset: 16384, length: 4096, flags: 1 }, { offset: 20480, length: 12288, flags: 0 },
    ]);
    assert.deepEqual(asked.map(([o]) => o), [0, 4096, 8192, 16384, 16896, 20480]);
  });

  it('clips long answers to the asked range, unaligned ends included', async () => {
    const asked: [number, number][] = [];
    const extents = await collect(walkExtents(scriptedQuery(DISK, 100, asked), walk(5000, 12000)));
    assert.deepEqual(extents, [{ offset: 5000, length: 3192, flags: 0 }, { offset: 8192, length: 8192, flags: 3 }, { offset: 16384, length: 616, flags: 1 }]);
    assert.deepEqual(asked, [[4608, 12800]]); // aligned to 512 both ways
  });

  it('splits requests at the largest allowed length', async () => {
    const asked: [number, number][] = [];
    const exact = async (offset: number, length: number) => { asked.push([offset, length]); return Uint32Array.from([length, 0]); };
    const extents = await collect(walkExtents(exact, walk(0, SIZE, { maxRequest: 8192 })));
    assert.deepEqual(extents, [{ offset: 0, length: SIZE, flags: 0 }]);
    assert.deepEqual(asked.map(([, len]) => len), [8192, 8192, 8192, 8192]);
  });

  it('fails instead of looping when an answer does not pass the asked offset', async () => {
    const stuck = async () => Uint32Array.from([100, 0]);
    await assert.rejects(collect(walkExtents(stuck, walk(600, 1000))), (e) => isVircptError(e, 'NBD_PROTOCOL'));
  });

  it('merges lists for comparison', () => {
    assert.deepEqual(mergeExtents([{ offset: 0, length: 1, flags: 2 }, { offset: 1, length: 2, flags: 2 }, { offset: 3, length: 1, flags: 0 }]),
      [{ offset: 0, length: 3, flags: 2 }, { offset: 3, length: 1, flags: 0 }]);
  });
});
