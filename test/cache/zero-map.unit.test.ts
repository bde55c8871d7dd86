// ZeroMap against a byte-per-byte model of the same extents.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ZeroMap, type Extent } from '../../src/cache/index.js';
import { rng } from './helpers.js';

/** Random, overlapping, unsorted extents over [0, size) (some reaching outside it), the ZeroMap
 *  made of them, and a byte-per-byte model: zero[i] is 1 where byte i lies in an extent. */
function randomCase(next: (n: number) => number, maxSize: number, maxCount: number, margin: number, maxLength: number) {
  const size = 1 + next(maxSize);
  const extents: Extent[] = Array.from({ length: next(maxCount) }, () => ({ offset: next(size + 2 * margin) - margin, length: next(maxLength) }));
  const zero = new Uint8Array(size);
  for (const e of extents) for (let i = Math.max(0, e.offset); i < Math.min(size, e.offset + e.length); i++) zero[i] = 1;
  return { size, extents, zero, map: ZeroMap.from(extents, size) };
}

test('covers() agrees with a byte map for random, overlapping, unsorted extents', () => {
  const next = rng(1234);
  for (let round = 0; round < 50; round++) {
    const { size, extents, zero, map } = randomCase(next, 400, 8, 20, 80);
    for (let q = 0; q < 200; q++) {
      const start = next(size);
      const end = start + 1 + next(size - start);
      assert.equal(map.covers(start, end), zero.subarray(start, end).every((b) => b === 1), `[${start}, ${end}) in ${JSON.stringify(extents)}`);
    }
    // Sorted, clipped, no overlap, adjacent ones merged.
    map.extents.forEach((e, i) => {
      assert.ok(e.offset >= 0 && e.length > 0 && e.offset + e.length <= size);
      const prev = map.extents[i - 1];
      if (prev) assert.ok(prev.offset + prev.length < e.offset);
    });
  }
});

test('malformed extents are ignored', () => {
  const map = ZeroMap.from([{ offset: Number.NaN, length: 10 }, { offset: 5, length: -3 }, { offset: 2, length: 2.5 }], 100);
  assert.deepEqual(map.extents, []);
  assert.equal(map.covers(0, 1), false);
});

test('nextData()/nextHole() agree with lseek semantics over a byte map', () => {
  const next = rng(99);
  for (let round = 0; round < 50; round++) {
    const { size, zero, map } = randomCase(next, 300, 6, 10, 60);
    for (let off = 0; off <= size + 2; off++) {
      const data = off >= size ? -1 : zero.indexOf(0, off);
      const hole = off >= size ? -1 : zero.indexOf(1, off);
      assert.equal(map.nextData(off, size), data, `SEEK_DATA ${off} in ${JSON.stringify(map.extents)} of ${size}`);
      assert.equal(map.nextHole(off, size), hole < 0 && off < size ? size : hole, `SEEK_HOLE ${off} in ${JSON.stringify(map.extents)} of ${size}`);
    }
  }
});
