// Zero extents: served as zeros without a source read or cache memory.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ZeroMap, type BlockSource } from '../../src/cache/index.js';
import { dataRanges } from '../../src/cache/fetch.js';
import { expected, KiB, MiB, readAt, rng, setup } from './helpers.js';

// Given unsorted and overlapping, as a careless server might: [1.5, 4) MiB and [6, 8) MiB.
const ZEROS = [
  { offset: 6.5 * MiB, length: 10 * MiB },
  { offset: 2.5 * MiB, length: 1.5 * MiB },
  { offset: 6 * MiB, length: MiB },
  { offset: 1.5 * MiB, length: MiB },
];

test('reads inside zero extents return zeros without a source read', async (t) => {
  const { file, src, cache } = await setup(t, 8 * MiB, { zeros: ZEROS });
  const zeroReads: Array<[number, number]> = [[2 * MiB, 2 * MiB], [1.5 * MiB, 128 * KiB], [7 * MiB, 2 * MiB], [4 * MiB - 1, 1]];
  await Promise.all(zeroReads.map(async ([o, l]) => {
    const got = await readAt(cache, src, o, l);
    assert.deepEqual(got, expected(file, o, l));
    assert.ok(got.every((b) => b === 0));
  }));
  assert.equal(src.zeroExtentCalls, 1, 'asked once, shared by concurrent first reads');
  assert.equal(src.reads, 0);
  assert.equal(cache.calculatedSize, 0);
  assert.equal(cache.stats.zeroBytes, 2 * MiB + 128 * KiB + MiB + 1);

  // Across the edge of an extent: only the data block is fetched.
  assert.deepEqual(await readAt(cache, src, 4 * MiB - 100, 200), expected(file, 4 * MiB - 100, 200));
  assert.deepEqual(src.log, [{ offset: 4 * MiB, length: MiB }]);
  // Of a block partly zero, only the data part is fetched; the rest is filled with zeros.
  assert.deepEqual(await readAt(cache, src, MiB, MiB), expected(file, MiB, MiB));
  assert.deepEqual(src.log.at(-1), { offset: MiB, length: MiB / 2 });

  const next = rng(99);
  for (let i = 0; i < 100; i++) {
    const [o, l] = [next(8 * MiB), next(3 * MiB)];
    assert.deepEqual(await readAt(cache, src, o, l), expected(file, o, l));
  }
  for (const r of src.log) assert.ok(r.offset + r.length <= 1.5 * MiB || (r.offset >= 4 * MiB && r.offset + r.length <= 6 * MiB), `read ${r.offset}+${r.length} touches only data`);
});

test('read-ahead skips blocks that are all zeros', async (t) => {
  const { file, src, cache } = await setup(t, 8 * MiB, { zeros: ZEROS });
  const reader = cache.reader(src);
  t.after(() => reader.close());
  const into = Buffer.alloc(128 * KiB);
  for (let o = 0; o < 8 * MiB; o += into.length) {
    await reader.read(o, into.length, into);
    assert.deepEqual(into, expected(file, o, into.length));
  }
  await reader.close();
  assert.ok(cache.stats.prefetchBlocks > 0);
  for (const r of src.log) assert.ok(r.offset + r.length <= 1.5 * MiB || (r.offset >= 4 * MiB && r.offset + r.length <= 6 * MiB));
  assert.equal(src.bytesRead, 3.5 * MiB, 'the data and nothing else');
});

test('a failing zeroExtents() only costs the optimisation', async (t) => {
  const { file, src, cache } = await setup(t, 3 * MiB, { zeros: ZEROS });
  let calls = 0;
  const faultyZeros: BlockSource = {
    id: src.id,
    size: src.size,
    read: (o, l, into) => src.read(o, l, into),
    zeroExtents: async () => {
      calls++;
      throw new Error('base:allocation was not negotiated');
    },
  };
  assert.deepEqual(await readAt(cache, faultyZeros, 0, 3 * MiB), expected(file, 0, 3 * MiB));
  assert.deepEqual(await readAt(cache, faultyZeros, 2 * MiB, 100), expected(file, 2 * MiB, 100));
  assert.equal(calls, 1);
  assert.equal(cache.stats.zeroMapErrors, 1);
  assert.equal(src.bytesRead, 3 * MiB);
});

test('a block\'s zero runs of 64 KiB or more are not read; shorter ones are read with their data', () => {
  const zeros = ZeroMap.from([
    { offset: 100 * KiB, length: 30 * KiB }, // short: read with the data around it
    { offset: 300 * KiB, length: 200 * KiB }, // skipped
    { offset: 900 * KiB, length: 200 * KiB }, // runs past the block's end: skipped
  ], 4 * MiB);
  assert.deepEqual(dataRanges(zeros, 0, MiB), [[0, 300 * KiB], [500 * KiB, 900 * KiB]]);
  assert.deepEqual(dataRanges(zeros, MiB, 2 * MiB), [[1100 * KiB, 2 * MiB]]);
  assert.deepEqual(dataRanges(zeros, 320 * KiB, 480 * KiB), [], 'all zeros');
  assert.deepEqual(dataRanges(undefined, 5, 10), [[5, 10]], 'no zero map: all of it');
  assert.deepEqual(dataRanges(ZeroMap.EMPTY, 0, MiB), [[0, MiB]]);
});
