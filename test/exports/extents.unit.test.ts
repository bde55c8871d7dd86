// The extent mappers: the one run merger (nbd/extents.ts appendRun), dirty-map.json's extents
// (exports/dirty-map.ts) and vircpt map --base's (cli/commands/map.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { allocationExtents } from '../../src/cli/commands/map.js';
import { toMapExtents } from '../../src/exports/dirty-map.js';
import { NBD_STATE_DIRTY, NBD_STATE_HOLE, NBD_STATE_ZERO } from '../../src/nbd/constants.js';
import { appendRun, type Run } from '../../src/nbd/extents.js';

test('appendRun: merges only touching runs of one kind, drops empty ones', () => {
  const runs: Array<Run & { k: string }> = [];
  const same = (a: { k: string }, b: { k: string }) => a.k === b.k;
  for (const r of [{ offset: 0, length: 5, k: 'a' }, { offset: 5, length: 5, k: 'a' }, { offset: 10, length: 0, k: 'b' },
    { offset: 10, length: 2, k: 'b' }, { offset: 20, length: 2, k: 'b' }]) appendRun(runs, { ...r }, same);
  assert.deepEqual(runs, [{ offset: 0, length: 10, k: 'a' }, { offset: 10, length: 2, k: 'b' }, { offset: 20, length: 2, k: 'b' }]);
});

test('toMapExtents: covers [0, size) with no gap, clean where nothing is said, neighbours merged', () => {
  const K = 65536;
  const map = toMapExtents([
    { offset: 0, length: K, flags: 0 }, { offset: K, length: K, flags: NBD_STATE_DIRTY },
    { offset: 2 * K, length: K, flags: NBD_STATE_DIRTY }, { offset: 5 * K, length: 2 * K, flags: NBD_STATE_DIRTY },
  ], 6 * K);
  assert.deepEqual(map, [
    { offset: 0, length: K, type: 0, description: 'clean' },
    { offset: K, length: 2 * K, type: 1, description: 'dirty' },
    { offset: 3 * K, length: 2 * K, type: 0, description: 'clean' },
    { offset: 5 * K, length: K, type: 1, description: 'dirty' },
  ], 'a gap is clean, and an extent past the size is clipped');
  assert.deepEqual(toMapExtents([], 10), [{ offset: 0, length: 10, type: 0, description: 'clean' }]);
  assert.deepEqual(toMapExtents([], 0), []);
});

test('allocationExtents: type is the flags, described as nbdinfo does, neighbours merged', () => {
  assert.deepEqual(allocationExtents([
    { offset: 0, length: 4, flags: 0 }, { offset: 4, length: 4, flags: 0 },
    { offset: 8, length: 4, flags: NBD_STATE_HOLE | NBD_STATE_ZERO }, { offset: 12, length: 4, flags: NBD_STATE_ZERO },
  ]), [
    { offset: 0, length: 8, type: 0, description: 'data' },
    { offset: 8, length: 4, type: 3, description: 'hole,zero' },
    { offset: 12, length: 4, type: 2, description: 'zero' },
  ]);
});
