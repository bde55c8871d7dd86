// Evicted blocks' buffers are reused by new fetches (src/cache/buffer-pool.ts). What could go
// wrong: a reader copying from a block that was evicted and refilled meanwhile, a read writing
// into the caller's buffer after it gave up, a failed or unstored fetch's buffer reused, a pool
// that grows. Tiny caches and many overlapping readers make evictions happen while they wait.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockCache, type BlockSource } from '../../src/cache/index.js';
import { isVircptError } from '../../src/errors.js';
import { FaultySource, MemoryFakeSource, until } from './file-source.js';
import { expected, KiB, MiB, rng, setup, type Setup } from './helpers.js';

const BS = 64 * KiB;

/**
 * `readers` loops of `reads` random reads each (up to 5 blocks long: more than the cache
 * holds), all at once; every 7th read of a loop has a signal that fires within 0-2 ms. Checks
 * every byte a read returned, and that an aborted read's buffer does not change after the
 * rejection. Returns how many reads were aborted.
 */
async function hammer(s: Setup, source: BlockSource, seed: number, readers = 16, reads = 60): Promise<number> {
  const size = source.size;
  let aborted = 0;
  const loop = async (r: number): Promise<void> => {
    const next = rng(seed * 1000 + r);
    for (let i = 0; i < reads; i++) {
      const offset = next(size);
      const length = 1 + next(5 * BS);
      const into = Buffer.alloc(length, 0xee);
      const signal = i % 7 === 6 ? AbortSignal.timeout(next(3)) : undefined;
      try {
        const n = await s.cache.read(source, offset, length, into, signal);
        assert.ok(into.subarray(0, n).equals(expected(s.file, offset, length)), `reader ${r} read ${i}: ${length}@${offset}`);
      } catch (err) {
        if (!signal || !isVircptError(err, 'TIMEOUT')) throw err;
        aborted++;
        const atRejection = Buffer.from(into);
        await new Promise((resolve) => setTimeout(resolve, 5));
        assert.ok(into.equals(atRejection), `reader ${r} read ${i}: written after it timed out`);
      }
      assert.ok(s.cache.calculatedSize <= s.cache.maxBytes);
    }
  };
  // AbortSignal.timeout's timers are unref'd: keep the loop alive meanwhile.
  const keepAlive = setInterval(() => {}, 1000);
  try {
    await Promise.all(Array.from({ length: readers }, (_, r) => loop(r)));
  } finally {
    clearInterval(keepAlive);
  }
  return aborted;
}

test('overlapping readers of a 3-block cache get every byte while blocks are evicted and recycled', async (t) => {
  const size = 2 * MiB + 5000; // the last block is short
  const s = await setup(t, size, { cache: { blockSize: BS, maxBytes: 3 * BS, poolBytes: 3 * BS } });
  const file = new FaultySource(s.src);
  const jitter = rng(99);
  file.delayFor = () => jitter(4);
  // A real file with reads delayed 0-3 ms, then a fake that fills buffers synchronously (so a
  // buffer reused too early is overwritten at once) or after 0-2 ms.
  const memory = new MemoryFakeSource(s.file.data, () => jitter(3));
  let aborted = 0;
  for (const [i, source] of [file, memory].entries()) {
    const before = s.cache.stats;
    aborted += await hammer(s, source, i + 1);
    const after = s.cache.stats;
    t.diagnostic(`${source.id}: ${JSON.stringify(after)}`);
    assert.ok(after.buffersReused - before.buffersReused > 100, 'buffers were recycled');
    assert.ok(after.pooledBytes <= 3 * BS);
  }
  assert.ok(aborted > 0, 'some reads timed out while their blocks were in flight');
});

test('a read longer than the cache copies the blocks it found before its own misses evict them', async (t) => {
  // Blocks 0-2 are cached and hit; the misses of 3-7, looked up in the same synchronous loop,
  // evict them, and each new fetch takes a buffer and fills it synchronously: a buffer reused
  // before the hits' copies ran would be overwritten already.
  const s = await setup(t, 8 * BS, { cache: { blockSize: BS, maxBytes: 3 * BS, poolBytes: 3 * BS } });
  const memory = new MemoryFakeSource(s.file.data, () => 0);
  const head = Buffer.alloc(3 * BS);
  await s.cache.read(memory, 0, 3 * BS, head);
  assert.equal(s.cache.calculatedSize, 3 * BS);
  for (let round = 0; round < 3; round++) {
    await new Promise((resolve) => setImmediate(resolve)); // the pool gets the evicted buffers
    const into = Buffer.alloc(8 * BS);
    await s.cache.read(memory, 0, 8 * BS, into);
    assert.ok(into.equals(s.file.data), `round ${round}`);
    await s.cache.read(memory, 0, 3 * BS, head); // blocks 0-2 cached again
  }
  assert.ok(s.cache.stats.buffersReused > 0);
});

test('evicted buffers are reused, the pool stays bounded, clear() empties it', async (t) => {
  const size = 32 * MiB;
  // The default proportions: the pool (a quarter of the cache) holds two read-ahead windows.
  const readahead = { minWindow: 512 * KiB, maxWindow: 512 * KiB };
  const s = await setup(t, size, { cache: { blockSize: 256 * KiB, maxBytes: 4 * MiB, readahead } });
  const reader = s.cache.reader(s.src);
  t.after(() => reader.close());
  const bound = 1 * MiB; // default pool: a quarter of the cache
  let peak = 0;
  const piece = 128 * KiB;
  for (let offset = 0; offset < size; offset += 2 * piece) {
    const [a, b] = await Promise.all([0, piece].map(async (d) => {
      const into = Buffer.alloc(piece);
      await reader.read(offset + d, piece, into);
      peak = Math.max(peak, s.cache.stats.pooledBytes);
      return into;
    }));
    assert.ok(Buffer.concat([a!, b!]).equals(expected(s.file, offset, 2 * piece)));
  }
  await reader.close();
  const { stats } = s.cache;
  t.diagnostic(JSON.stringify(stats));
  const blocks = size / s.cache.blockSize;
  assert.equal(stats.buffersAllocated + stats.buffersReused, blocks, 'one buffer per fetched block');
  assert.ok(stats.buffersReused >= blocks / 2, `${stats.buffersReused} of ${blocks} reused`);
  assert.ok(peak <= bound && stats.pooledBytes <= bound, `pool peak ${peak}`);
  s.cache.clear();
  assert.equal(s.cache.stats.pooledBytes, 0);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(s.cache.stats.pooledBytes, 0, 'nothing comes back from quarantine after clear()');

  const off = new BlockCache({ blockSize: 256 * KiB, maxBytes: 4 * MiB, poolBytes: 0 });
  const into = Buffer.alloc(size);
  await off.read(s.src, 0, size, into);
  assert.ok(into.equals(s.file.data));
  assert.equal(off.stats.buffersReused, 0);
  assert.equal(off.stats.pooledBytes, 0);
});

test('buffers of failed fetches, of fetches not stored and of short blocks are never reused', async (t) => {
  const size = 2 * MiB + 100;
  const s = await setup(t, size, { cache: { blockSize: BS, maxBytes: 4 * BS, poolBytes: 4 * BS } });
  const src = new FaultySource(s.src);
  const never = new Set<ArrayBufferLike>();
  // A failed fetch.
  src.failNext(new Error('EIO'));
  await assert.rejects(s.cache.read(src, 0, 10, Buffer.alloc(10)), /EIO/);
  never.add(src.intos.at(-1)!.buffer);
  // A fetch in flight when its source was dropped: the reader gets it, the cache does not.
  src.hold();
  const inflight = s.cache.read(src, BS, 10, Buffer.alloc(10));
  await until(() => src.started === 2);
  s.cache.dropSource(src);
  src.release();
  await inflight;
  never.add(src.intos.at(-1)!.buffer);
  // The short last block, stored and then evicted.
  await s.cache.read(src, size - 10, 10, Buffer.alloc(10));
  never.add(src.intos.at(-1)!.buffer);
  const checked = src.intos.length;
  // Evict and refetch everything a few times.
  for (let round = 0; round < 3; round++) {
    const into = Buffer.alloc(size);
    assert.equal(await s.cache.read(src, 0, size, into), size);
    assert.ok(into.equals(s.file.data));
  }
  assert.ok(s.cache.stats.buffersReused > 0);
  const reusedBad = src.intos.slice(checked).filter((b) => never.has(b.buffer));
  assert.equal(reusedBad.length, 0);
});
