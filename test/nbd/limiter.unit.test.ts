// The NBD client's backpressure gate (src/nbd/limiter.ts): FIFO by count and by bytes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import { Limiter } from '../../src/nbd/limiter.js';

/** Which of the promises have settled, after the microtasks that could settle them ran. */
async function settled(ps: Promise<unknown>[]): Promise<boolean[]> {
  const state = ps.map(() => false);
  ps.forEach((p, i) => p.then(() => { state[i] = true; }, () => { state[i] = true; }));
  await new Promise((r) => setImmediate(r));
  return state;
}

test('Limiter: passes up to the count, then first in first out', async () => {
  const l = new Limiter(2, 1000);
  const ps = [l.acquire(1), l.acquire(1), l.acquire(1), l.acquire(1)];
  assert.deepEqual(await settled(ps), [true, true, false, false]);
  assert.equal(l.active, 4);
  l.release(1);
  assert.deepEqual(await settled(ps), [true, true, true, false]);
  l.release(1);
  assert.deepEqual(await settled(ps), [true, true, true, true]);
});

test('Limiter: by bytes; one request larger than the budget passes alone, so it cannot starve', async () => {
  const l = new Limiter(10, 100);
  const small = l.acquire(60);
  const big = l.acquire(500);
  const after = l.acquire(10);
  assert.deepEqual(await settled([small, big, after]), [true, false, false], 'the big one waits, and so does the one behind it');
  assert.equal(l.load, 570);
  l.release(60);
  assert.deepEqual(await settled([big, after]), [true, false]);
  l.release(500);
  assert.deepEqual(await settled([after]), [true]);
});

test('Limiter: an aborted waiter leaves the queue and lets the next one in; rejectAll fails the rest', async () => {
  const l = new Limiter(1, 100);
  await l.acquire(10);
  const ac = new AbortController();
  const first = l.acquire(10, ac.signal);
  const second = l.acquire(10);
  const third = l.acquire(10);
  ac.abort(new Error('stop'));
  await assert.rejects(first, (err: unknown) => isVircptError(err) && err.code === 'ABORTED');
  l.release(10);
  assert.deepEqual(await settled([second, third]), [true, false]);
  l.rejectAll(new Error('connection gone'));
  await assert.rejects(third, /connection gone/);
  await assert.rejects(l.acquire(1, AbortSignal.abort()), (err: unknown) => isVircptError(err) && err.code === 'ABORTED');
  assert.throws(() => new Limiter(0, 1), RangeError);
});
