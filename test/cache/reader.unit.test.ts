// Reader: read-ahead on sequential access (as FUSE delivers it: 128 KiB requests, two in
// flight), none on random access, bounded by the cache, stopped by close().
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_REORDER_SLACK, type Reader } from '../../src/cache/index.js';
import { isVircptError } from '../../src/errors.js';
import { FaultySource } from './file-source.js';
import { expected, KiB, MiB, readAt, rng, setup, type Setup } from './helpers.js';

const PIECE = 128 * KiB; // libfuse 2's read size (it could not raise max_read)

/**
 * Reads [from, to) in PIECE reads, two in flight (the second issued first when `swap`);
 * returns the read-ahead window after each pair. Checks the bytes and that the cache's size
 * stays within maxBytes.
 */
async function readSequential(s: Setup, reader: Reader, from: number, to: number, swap = false, piece = PIECE): Promise<number[]> {
  const windows: number[] = [];
  for (let o = from; o < to; o += 2 * piece) {
    const a = Buffer.alloc(piece);
    const b = Buffer.alloc(piece);
    const second = swap ? reader.read(o + piece, piece, b) : undefined;
    const first = reader.read(o, piece, a);
    const [na, nb] = await Promise.all([first, second ?? reader.read(o + piece, piece, b)]);
    assert.deepEqual(Buffer.concat([a.subarray(0, na), b.subarray(0, nb)]), expected(s.file, o, 2 * piece));
    windows.push(reader.window);
    assert.ok(s.cache.calculatedSize <= s.cache.maxBytes, `${s.cache.calculatedSize} bytes cached`);
  }
  return windows;
}

const distinct = (xs: number[]): number[] => xs.filter((x, i) => x !== xs[i - 1]);

test('a sequential reader reads ahead with a window growing 2 -> 4 -> 8 -> 16 MiB', async (t) => {
  const size = 64 * MiB;
  const s = await setup(t, size);
  const reader = s.cache.reader(s.src);
  t.after(() => reader.close());
  const started = performance.now();
  const windows = await readSequential(s, reader, 0, size);
  const ms = performance.now() - started;
  await reader.close();
  const { stats } = s.cache;
  t.diagnostic(`64 MiB in 128 KiB reads, 2 in flight, bytes checked: ${s.src.reads} source reads, ${ms.toFixed(0)} ms, ` +
    `${(size / MiB / (ms / 1000)).toFixed(0)} MiB/s; ${JSON.stringify(stats)}`);
  assert.deepEqual(distinct(windows.filter((w) => w > 0)), [2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB]);
  assert.equal(s.src.bytesRead, size, 'every byte fetched exactly once');
  // One source read per block, asked for in file order.
  assert.ok(s.src.log.every((r, i) => r.length === MiB && r.offset === i * MiB));
  assert.equal(stats.misses, 1, 'only the first block was waited for without read-ahead');
  assert.equal(stats.prefetchHits, size / MiB - 1);
});

test('reads that arrive slightly out of order still count as sequential', async (t) => {
  const size = 16 * MiB;
  const s = await setup(t, size);
  const reader = s.cache.reader(s.src);
  t.after(() => reader.close());
  const windows = await readSequential(s, reader, 0, size, true);
  assert.ok(Math.max(...windows) >= 4 * MiB);
  assert.equal(s.src.bytesRead, size);
  assert.ok(s.cache.stats.prefetchHits >= size / MiB - 2);

  // libfuse 3's 1 MiB requests, two at a time in either order, too.
  const big = await setup(t, size);
  const bigReader = big.cache.reader(big.src);
  t.after(() => bigReader.close());
  await readSequential(big, bigReader, 0, size, true, MiB);
  assert.ok(big.cache.stats.prefetchHits >= size / MiB - 4, `${big.cache.stats.prefetchHits} prefetch hits`);

  // With no slack, the same pattern looks random: that is why the slack exists.
  const strict = await setup(t, size);
  const strictReader = strict.cache.reader(strict.src, { reorderSlack: 0 });
  t.after(() => strictReader.close());
  await readSequential(strict, strictReader, 0, size, true);
  assert.equal(strict.cache.stats.prefetchBlocks, 0);
});

test('random access does not read ahead', async (t) => {
  const size = 32 * MiB;
  const s = await setup(t, size);
  const reader = s.cache.reader(s.src);
  t.after(() => reader.close());
  const next = rng(5);
  let last = 0; // where a new reader expects its first read
  for (let i = 0; i < 40; i++) {
    let o = next(size - PIECE);
    while (Math.abs(o - last) <= DEFAULT_REORDER_SLACK) o = next(size - PIECE);
    const into = Buffer.alloc(PIECE);
    await reader.read(o, PIECE, into);
    assert.deepEqual(into, expected(s.file, o, PIECE));
    assert.equal(reader.window, 0);
    last = o + PIECE;
  }
  await reader.close();
  assert.equal(s.cache.stats.prefetchBlocks, 0);
  assert.equal(s.src.bytesRead, s.cache.stats.misses * MiB, 'only the missed blocks were read');
});

test('a random read resets the window; sequential reads start it again', async (t) => {
  const s = await setup(t, 32 * MiB);
  const reader = s.cache.reader(s.src);
  t.after(() => reader.close());
  await readSequential(s, reader, 0, 8 * MiB);
  assert.ok(reader.window >= 4 * MiB);
  const into = Buffer.alloc(PIECE);
  await reader.read(24 * MiB, PIECE, into);
  assert.equal(reader.window, 0);
  await reader.read(24 * MiB + PIECE, PIECE, into);
  assert.equal(reader.window, 2 * MiB);
  assert.deepEqual(into, expected(s.file, 24 * MiB + PIECE, PIECE));
});

test('a reader that skips a hole (SEEK_DATA, as cp does) stays one stream, and read-ahead fetches the data after it', async (t) => {
  // Data [0, 6) and [30, 36) MiB, the rest holes.
  const zeros = [{ offset: 6 * MiB, length: 24 * MiB }, { offset: 36 * MiB, length: 28 * MiB }];
  const s = await setup(t, 64 * MiB, { zeros });
  await s.cache.zeroMap(s.src); // loaded, as after the first lseek(SEEK_DATA)
  const reader = s.cache.reader(s.src);
  t.after(() => reader.close());
  await readSequential(s, reader, 0, 6 * MiB);
  await readSequential(s, reader, 30 * MiB, 36 * MiB);
  assert.ok(reader.window > 0, 'the jump over the hole did not reset read-ahead');
  await reader.close();
  assert.equal(s.cache.stats.misses, 1, 'only the first block was waited for: the second run was read ahead');
  assert.equal(s.src.bytesRead, 12 * MiB, 'no hole was fetched, no block twice');
});

test('read-ahead never holds up the current read, and close() stops it', async (t) => {
  const s = await setup(t, 16 * MiB);
  const slow = new FaultySource(s.src);
  slow.holdIf = (offset) => offset >= MiB; // hold read-ahead only
  slow.hold();
  t.after(() => slow.release());
  const reader = s.cache.reader(slow);
  const into = Buffer.alloc(PIECE);
  for (let o = 0; o < MiB; o += PIECE) {
    await reader.read(o, PIECE, into);
    assert.deepEqual(into, expected(s.file, o, PIECE));
  }
  assert.equal(slow.pending, 2, 'read-ahead of blocks 1-2 is in flight, held');
  let closed = false;
  const closing = reader.close().then(() => (closed = true));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(closed, false, 'close() waits for read-ahead in flight');
  slow.release();
  await closing;
  assert.equal(slow.pending, 0);
  const startedBefore = slow.started;
  await assert.rejects(reader.read(MiB, PIECE, into), (e) => isVircptError(e, 'INVALID'));
  assert.equal(slow.started, startedBefore, 'nothing read after close');
  await reader.close(); // idempotent
});

test('read-ahead is bounded by the cache size and never evicts what is being read', async (t) => {
  const size = 32 * MiB;
  const s = await setup(t, size, { cache: { maxBytes: 8 * MiB } });
  const reader = s.cache.reader(s.src);
  t.after(() => reader.close());
  const windows = await readSequential(s, reader, 0, size);
  assert.equal(Math.max(...windows), 2 * MiB, 'a quarter of the cache');
  assert.equal(s.src.bytesRead, size, 'no prefetched block was evicted before it was read');
});

test('several sequential readers share a small cache and each gets its bytes', async (t) => {
  const cacheOpts = { maxBytes: 12 * MiB, blockSize: 512 * KiB };
  const first = await setup(t, 20 * MiB + 5000, { cache: cacheOpts });
  const others = await Promise.all([1, 2, 3].map(() => setup(t, 20 * MiB + 5000)));
  const all = [first, ...others].map((s) => ({ ...s, cache: first.cache }));
  let peak = 0;
  const timer = setInterval(() => (peak = Math.max(peak, first.cache.calculatedSize)), 1);
  t.after(() => clearInterval(timer));
  await Promise.all(all.map(async (s) => {
    const reader = s.cache.reader(s.src);
    await readSequential(s, reader, 0, s.src.size);
    await reader.close();
  }));
  assert.ok(peak <= first.cache.maxBytes, `peak ${peak}`);
  assert.ok(first.cache.stats.prefetchHits > 0);
});

test('blocks a sequential reader has read through are dropped, so a stream keeps other readers\' blocks', async (t) => {
  const size = 96 * MiB; // three times the cache
  const s = await setup(t, size, { cache: { maxBytes: 32 * MiB } });
  // Another disk's blocks, read at random first (a loop-mounted filesystem's metadata, say).
  const other = await setup(t, 8 * MiB);
  const hot = [1, 4, 7].map((i) => i * MiB + 4096);
  for (const at of hot) assert.deepEqual(await readAt(s.cache, other.src, at, 4096), expected(other.file, at, 4096));
  let peak = 0;
  const timer = setInterval(() => (peak = Math.max(peak, s.cache.calculatedSize)), 1);
  t.after(() => clearInterval(timer));
  const reader = s.cache.reader(s.src);
  await readSequential(s, reader, 0, size, true, MiB);
  await reader.close();
  clearInterval(timer);
  const { stats } = s.cache;
  t.diagnostic(`stream of 96 MiB through a 32 MiB cache: peak ${(peak / MiB).toFixed(0)} MiB stored; ${JSON.stringify(stats)}`);
  assert.ok(stats.passedBlocks >= size / MiB - 4, `${stats.passedBlocks} blocks dropped as read through`);
  assert.ok(peak <= 24 * MiB, `peak ${peak}: read-ahead windows and the slack, not the whole stream`);
  assert.ok(stats.buffersAllocated <= 48, `${stats.buffersAllocated} buffers allocated for 96 blocks: the rest recycled`);
  const otherReads = other.src.log.length;
  for (const at of hot) assert.deepEqual(await readAt(s.cache, other.src, at, 4096), expected(other.file, at, 4096));
  assert.equal(other.src.log.length, otherReads, 'the other disk\'s blocks are still cached');
  // The stream's last blocks, inside the reorder slack, are kept too.
  const streamReads = s.src.log.length;
  assert.deepEqual(await readAt(s.cache, s.src, size - 4096, 4096), expected(s.file, size - 4096, 4096));
  assert.equal(s.src.log.length, streamReads, 'the tail of the stream is still cached');
});

test('with dropPassed off, a sequential reader leaves its blocks to the LRU', async (t) => {
  const size = 16 * MiB;
  const s = await setup(t, size, { cache: { maxBytes: 64 * MiB, readahead: { dropPassed: false } } });
  const reader = s.cache.reader(s.src);
  await readSequential(s, reader, 0, size, false, MiB);
  await reader.close();
  assert.equal(s.cache.stats.passedBlocks, 0);
  assert.equal(s.cache.calculatedSize, size, 'the whole file stays cached');
  const reads = s.src.log.length;
  assert.deepEqual(await readAt(s.cache, s.src, 3 * MiB, MiB), expected(s.file, 3 * MiB, MiB));
  assert.equal(s.src.log.length, reads, 'served from the cache');
});

test('reads up to 3 MiB out of order (cat\'s doubled kernel read-ahead) stay one sequential stream', async (t) => {
  const size = 64 * MiB;
  const s = await setup(t, size);
  const reader = s.cache.reader(s.src);
  t.after(() => reader.close());
  const windows: number[] = [];
  for (let o = 0; o < size; o += 4 * MiB) {
    // Four 1 MiB requests of one read-ahead batch, reaching JS last first.
    const bufs = [0, 1, 2, 3].map(() => Buffer.alloc(MiB));
    const reads = [3, 1, 2, 0].map((i) => reader.read(o + i * MiB, MiB, bufs[i]!));
    await Promise.all(reads);
    assert.deepEqual(Buffer.concat(bufs), expected(s.file, o, 4 * MiB));
    windows.push(reader.window);
  }
  await reader.close();
  assert.ok(windows.slice(1).every((w) => w > 0), `read-ahead never reset: ${windows.map((w) => w / MiB).join(' ')}`);
  assert.equal(Math.max(...windows), 16 * MiB);
  assert.ok(s.cache.stats.passedBlocks >= size / MiB - 8, `${s.cache.stats.passedBlocks} blocks dropped as read through`);
});
