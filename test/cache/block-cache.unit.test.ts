// BlockCache over a real file: bytes, sharing, aborts, failures, batching, invalidation.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockCache } from '../../src/cache/index.js';
import { isVircptError, VircptError } from '../../src/errors.js';
import { FaultySource, until } from './file-source.js';
import { expected, KiB, MiB, readAt, rng, setup } from './helpers.js';

test('bytes equal the file for edge cases and random ranges, each block fetched once', async (t) => {
  const size = 5 * MiB + 12345; // the last block is short
  const { file, src, cache } = await setup(t, size, { cache: { blockSize: 256 * KiB } });
  const bs = cache.blockSize;
  const cases: Array<[number, number]> = [
    [0, 0], [0, 1], [bs - 10, 20], [bs, bs], [3 * bs - 1, 2 * bs + 2], [size - 100, 100],
    [size - 100, 1000], [size - 1, 1], [size, 10], [size + 5, 10], [0, size], [17, 0],
  ];
  const next = rng(42);
  for (let i = 0; i < 300; i++) cases.push([next(size), next(3 * bs)]);
  for (const [offset, length] of cases) {
    const got = await readAt(cache, src, offset, length);
    assert.deepEqual(got, expected(file, offset, length), `read ${offset}+${length}`);
  }
  assert.ok(src.bytesRead <= size, `fetched ${src.bytesRead} bytes of a ${size}-byte file`);
  assert.equal(cache.stats.bytesFetched, src.bytesRead);
});

test('bytes stay right while a small cache evicts', async (t) => {
  const size = 3 * MiB + 777;
  const { file, src, cache } = await setup(t, size, { cache: { blockSize: 64 * KiB, maxBytes: 256 * KiB } });
  const next = rng(7);
  const reads = Array.from({ length: 200 }, () => [next(size), next(200 * KiB)] as const);
  // Eight at a time, as FUSE workers would.
  for (let i = 0; i < reads.length; i += 8) {
    const batch = reads.slice(i, i + 8);
    const got = await Promise.all(batch.map(([o, l]) => readAt(cache, src, o, l)));
    got.forEach((g, j) => assert.deepEqual(g, expected(file, batch[j]![0], batch[j]![1])));
    assert.ok(cache.calculatedSize <= cache.maxBytes);
  }
});

test('bad ranges and small buffers are refused', async (t) => {
  const { src, cache } = await setup(t, MiB);
  for (const [o, l] of [[-1, 10], [0, -1], [0.5, 10], [Number.NaN, 1]] as const) {
    await assert.rejects(cache.read(src, o, l, Buffer.alloc(16)), (e) => isVircptError(e, 'INVALID'));
  }
  await assert.rejects(cache.read(src, 0, 100, Buffer.alloc(10)), (e) => isVircptError(e, 'INVALID'));
  assert.equal(src.reads, 0);
});

test('concurrent readers of one block share one source read', async (t) => {
  const { file, src, cache } = await setup(t, 4 * MiB);
  const slow = new FaultySource(src);
  slow.hold();
  const offsets = [MiB, MiB + 100, MiB + 128 * KiB, 2 * MiB - 128 * KiB, MiB + 5000];
  const reads = offsets.map((o) => readAt(cache, slow, o, 128 * KiB));
  await until(() => slow.started === 1);
  slow.release();
  const got = await Promise.all(reads);
  got.forEach((g, i) => assert.deepEqual(g, expected(file, offsets[i]!, 128 * KiB)));
  assert.equal(src.reads, 1);
  assert.equal(cache.stats.misses, 1);
  assert.equal(cache.stats.joins, offsets.length - 1);
});

test('an aborted reader does not cancel the fetch another reader waits for', async (t) => {
  const { file, src, cache } = await setup(t, 4 * MiB);
  const slow = new FaultySource(src);
  slow.hold();
  const ac = new AbortController();
  const first = readAt(cache, slow, 2 * MiB, 4096, ac.signal); // this one started the fetch
  const second = readAt(cache, slow, 2 * MiB + 8192, 4096);
  await until(() => slow.started === 1);
  ac.abort();
  await assert.rejects(first, (e) => isVircptError(e, 'ABORTED'));
  assert.equal(slow.pending, 1, 'the shared fetch is still in flight');
  slow.release();
  assert.deepEqual(await second, expected(file, 2 * MiB + 8192, 4096));
  // The block the aborted reader asked for is cached: no second source read.
  assert.deepEqual(await readAt(cache, slow, 2 * MiB, 4096), expected(file, 2 * MiB, 4096));
  assert.equal(src.reads, 1);
});

test('an aborted lone reader fails promptly with ABORTED, a timed out one with TIMEOUT', async (t) => {
  const { file, src, cache } = await setup(t, 4 * MiB);
  const slow = new FaultySource(src);
  slow.hold();
  t.after(() => slow.release());
  const ac = new AbortController();
  const read = readAt(cache, slow, 0, 4096, ac.signal);
  await until(() => slow.started === 1);
  const abortedAt = performance.now();
  ac.abort(new Error('user pressed ^C'));
  await assert.rejects(read, (e) => isVircptError(e, 'ABORTED') && (e.cause as Error).message === 'user pressed ^C');
  assert.ok(performance.now() - abortedAt < 250, 'rejected at once, source still held');

  const started = performance.now();
  // AbortSignal.timeout's timer is unref'd: keep the loop alive while only it is pending.
  const keepAlive = setInterval(() => {}, 1000);
  try {
    await assert.rejects(readAt(cache, slow, MiB, 10, AbortSignal.timeout(50)), (e) => isVircptError(e, 'TIMEOUT'));
  } finally {
    clearInterval(keepAlive);
  }
  assert.ok(performance.now() - started < 1000);

  // An already aborted signal costs no source read.
  await assert.rejects(readAt(cache, slow, 3 * MiB, 10, AbortSignal.abort()), (e) => isVircptError(e, 'ABORTED'));
  assert.equal(slow.started, 2);
  slow.release();
  await until(() => slow.pending === 0);
  assert.deepEqual(await readAt(cache, slow, 0, 4096), expected(file, 0, 4096));
  assert.equal(src.reads, 2, 'the abandoned fetches were cached, not repeated');
});

test('a failing source read reaches every waiting reader and is not cached', async (t) => {
  const { file, src, cache } = await setup(t, 4 * MiB);
  const faulty = new FaultySource(src);
  const failure = new VircptError('NBD_SERVER_ERROR', 'server said EIO', { errno: 5 });
  faulty.failNext(failure);
  faulty.hold();
  const reads = [readAt(cache, faulty, 0, 100), readAt(cache, faulty, 500, 100), readAt(cache, faulty, MiB - 30, 20)];
  await until(() => faulty.started === 1);
  faulty.release();
  for (const r of reads) await assert.rejects(r, (e) => e === failure);
  assert.equal(cache.calculatedSize, 0);
  assert.deepEqual(await readAt(cache, faulty, 0, 100), expected(file, 0, 100));
  assert.equal(faulty.started, 2, 'one failed read, one retry');

  // A read of three blocks fails when one fails; the failed block is not kept, the others are.
  faulty.failNext(new Error('connection reset'));
  await assert.rejects(readAt(cache, faulty, MiB, 3 * MiB), /connection reset/);
  await until(() => faulty.pending === 0);
  assert.equal(cache.calculatedSize, 3 * MiB);
  assert.deepEqual(await readAt(cache, faulty, MiB - 10, 3 * MiB), expected(file, MiB - 10, 3 * MiB));
  assert.equal(faulty.started, 6, 'only the failed block was read again');
});

test('each missing block is its own source read, all in flight, split at the source maxRequest', async (t) => {
  const { file, src, cache } = await setup(t, 6 * MiB + 3);
  const held = new FaultySource(src);
  held.hold();
  const read = readAt(cache, held, 0, 4 * MiB);
  await until(() => held.started === 4); // all four in flight before any returned
  held.release();
  assert.deepEqual(await read, expected(file, 0, 4 * MiB));
  // Block 3 is cached; 4, 5 and the short last one (3 bytes) are read.
  src.log.length = 0;
  assert.deepEqual(await readAt(cache, src, 3 * MiB, 3 * MiB + 3), expected(file, 3 * MiB, 3 * MiB + 3));
  assert.deepEqual(src.log, [{ offset: 4 * MiB, length: MiB }, { offset: 5 * MiB, length: MiB }, { offset: 6 * MiB, length: 3 }]);

  const small = await setup(t, 3 * MiB, { source: { maxRequest: 192 * KiB } });
  assert.deepEqual(await readAt(small.cache, small.src, 100, 2 * MiB), expected(small.file, 100, 2 * MiB));
  assert.ok(small.src.log.every((r) => r.length <= 192 * KiB));
  assert.equal(small.src.bytesRead, 3 * MiB);
});

test('the cache never holds more than maxBytes', async (t) => {
  const { file, src, cache } = await setup(t, 24 * MiB, { cache: { maxBytes: 4 * MiB, blockSize: 256 * KiB } });
  let peak = 0;
  const reader = cache.reader(src);
  t.after(() => reader.close());
  const piece = 128 * KiB;
  for (let offset = 0; offset < file.data.length; offset += 2 * piece) {
    const [a, b] = await Promise.all([0, piece].map(async (d) => {
      const into = Buffer.alloc(piece);
      await reader.read(offset + d, piece, into);
      peak = Math.max(peak, cache.calculatedSize);
      return into;
    }));
    assert.deepEqual(Buffer.concat([a!, b!]), expected(file, offset, 2 * piece));
  }
  assert.ok(peak <= cache.maxBytes, `peak ${peak}`);
  assert.ok(peak > cache.maxBytes / 2, `the cache was used (peak ${peak})`);
  assert.ok(cache.stats.prefetchHits > 0);
});

test('invalidate drops the blocks, in flight ones included; the next read refetches', async (t) => {
  const { file, src, cache } = await setup(t, 4 * MiB);
  await readAt(cache, src, 0, 2 * MiB);
  await readAt(cache, src, 0, 2 * MiB);
  assert.equal(src.reads, 2, 'one read per block, the second time none');
  assert.equal(cache.calculatedSize, 2 * MiB);
  cache.invalidate(src.id);
  assert.equal(cache.calculatedSize, 0);
  assert.deepEqual(await readAt(cache, src, 0, 2 * MiB), expected(file, 0, 2 * MiB));
  assert.equal(src.reads, 4);

  const slow = new FaultySource(src);
  slow.hold();
  const inflight = readAt(cache, slow, 3 * MiB, 100);
  await until(() => slow.started === 1);
  cache.dropSource(slow);
  slow.release();
  assert.deepEqual(await inflight, expected(file, 3 * MiB, 100), 'a waiting reader still gets its bytes');
  await readAt(cache, slow, 3 * MiB, 100);
  assert.equal(slow.started, 2, 'the block fetched before the drop was not kept');
  assert.equal(cache.calculatedSize, MiB);
});

test('sources with different ids do not share blocks', async (t) => {
  const a = await setup(t, 2 * MiB);
  const b = await setup(t, 2 * MiB);
  const cache = new BlockCache();
  assert.deepEqual(await readAt(cache, a.src, 0, 100), expected(a.file, 0, 100));
  assert.deepEqual(await readAt(cache, b.src, 0, 100), expected(b.file, 0, 100));
  cache.invalidate(a.src.id);
  assert.equal(cache.calculatedSize, MiB, "b's block stays");
});
