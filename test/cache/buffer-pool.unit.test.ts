// BufferPool on its own: quarantine until the next macrotask, bounds, what it refuses, idle trim.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { BufferPool } from '../../src/cache/buffer-pool.js';

const SIZE = 4096;
const nextMacrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test('a given buffer is reused only after the microtasks of the macrotask that gave it', async () => {
  const pool = new BufferPool(SIZE, 4 * SIZE);
  const a = pool.take();
  assert.equal(a.length, SIZE);
  assert.equal(pool.allocated, 1);
  pool.give(a);
  assert.notEqual(pool.take(), a, 'not in the same synchronous run');
  await Promise.resolve();
  await Promise.resolve();
  assert.notEqual(pool.take(), a, 'not within the same microtask drain');
  await nextMacrotask();
  assert.equal(pool.take(), a);
  assert.equal(pool.reused, 1);
  assert.equal(pool.bytes, 0);
});

test('the pool holds at most its capacity and refuses foreign, short and repeated buffers', async () => {
  const pool = new BufferPool(SIZE, 3 * SIZE + 100);
  const bufs = Array.from({ length: 5 }, () => pool.take());
  for (const b of bufs) pool.give(b);
  assert.equal(pool.bytes, 3 * SIZE);
  pool.give(bufs[0]!); // given twice
  await nextMacrotask();
  assert.equal(pool.bytes, 3 * SIZE);
  const taken = new Set([pool.take(), pool.take(), pool.take()]);
  assert.equal(taken.size, 3);
  assert.equal(pool.bytes, 0);

  pool.give(Buffer.allocUnsafeSlow(SIZE - 1)); // a short block
  pool.give(Buffer.allocUnsafeSlow(2 * SIZE).subarray(0, SIZE)); // a slice of a bigger one
  const own = Buffer.allocUnsafeSlow(SIZE);
  pool.give(own);
  await nextMacrotask();
  assert.equal(pool.bytes, SIZE, 'only a whole buffer of its own is kept');
  assert.equal(pool.take(), own);

  const off = new BufferPool(SIZE, 0);
  off.give(off.take());
  assert.equal(off.bytes, 0);
});

test('drain() and an idle period let go of everything', async () => {
  const pool = new BufferPool(SIZE, 8 * SIZE, 50);
  pool.give(pool.take());
  pool.give(pool.take());
  pool.drain();
  await nextMacrotask();
  assert.equal(pool.bytes, 0, 'quarantined ones are dropped too');

  for (const b of [pool.take(), pool.take()]) pool.give(b);
  await nextMacrotask();
  assert.equal(pool.bytes, 2 * SIZE);
  // While buffers are taken, the pool keeps what it gets back.
  for (let i = 0; i < 4; i++) {
    await sleep(5);
    pool.give(pool.take());
  }
  await nextMacrotask();
  assert.equal(pool.bytes, 2 * SIZE);
  await sleep(200);
  assert.equal(pool.bytes, 0, 'nothing taken for a while: dropped');
});
