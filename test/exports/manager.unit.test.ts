// The export manager (src/exports/manager.ts) on a fake libvirt (fake-libvirt.ts): one shared
// start for concurrent opens, reference counts, the idle release and its re-check, failed starts
// forgotten, a new start waiting for the stop of the export before it, and close(). Timers are
// node:test's mock timers, so "idle seconds" pass when the test says so; file system work (the
// instance's folders, export.json) is real, in a temporary folder.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { test, type TestContext } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import { ExportManager } from '../../src/exports/manager.js';
import { Instance } from '../../src/exports/runtime.js';
import { createLogger } from '../../src/log.js';
import { CHECKPOINT, DOMAIN, FakeLibvirt, Gate } from './fake-libvirt.js';

const IDLE_MS = 30_000;

/** Lets real I/O and promise chains run until `cond` holds (bounded by real time, not mock time). */
async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

/** Settles what can settle now: a few turns of the event loop. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

async function setup(t: TestContext) {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const root = await mkdtemp(path.join(tmpdir(), 'vircptfs-manager-'));
  const fake = new FakeLibvirt();
  const dirs = { runDir: path.join(root, 'run'), scratchRoot: path.join(root, 'scratch') };
  const manager = new ExportManager({
    virsh: fake.virsh, instance: new Instance('fs-1-1', dirs), log: createLogger({ level: 'silent', prefix: 'test' }),
    idleMs: IDLE_MS, scratchReserve: { bytes: 0 }, freeze: false,
  });
  t.after(async () => {
    t.mock.timers.reset();
    await manager.close();
    await rm(root, { recursive: true, force: true });
  });
  return { fake, manager, dirs };
}

test('concurrent opens share one start; the export stays while any lease is held', async (t) => {
  const { fake, manager } = await setup(t);
  fake.beginGate = new Gate();
  const opens = [manager.acquire(DOMAIN, CHECKPOINT), manager.acquire(DOMAIN, CHECKPOINT), manager.acquire(DOMAIN, CHECKPOINT)];
  await until(() => fake.count('backup-begin') === 1, 'backup-begin');
  fake.beginGate.open();
  const leases = await Promise.all(opens);
  assert.equal(fake.count('backup-begin'), 1, 'one start for three opens');
  assert.ok(leases.every((l) => l.export === leases[0]!.export));
  assert.equal(leases[0]!.export.refs, 3);
  assert.equal(manager.peek(DOMAIN), leases[0]!.export);
  leases[0]!.release();
  leases[0]!.release(); // idempotent
  leases[1]!.release();
  assert.equal(leases[0]!.export.refs, 1);
  t.mock.timers.tick(IDLE_MS * 2);
  await settle();
  assert.equal(fake.count('domjobabort'), 0, 'held by the third lease: never released');
  assert.ok(fake.job);
});

test('the last release arms the idle timer; it releases the export when it fires', async (t) => {
  const { fake, manager, dirs } = await setup(t);
  const lease = await manager.acquire(DOMAIN, CHECKPOINT);
  lease.release();
  t.mock.timers.tick(IDLE_MS - 1);
  await settle();
  assert.equal(fake.count('domjobabort'), 0, 'not before idle');
  t.mock.timers.tick(1);
  await until(() => fake.job === undefined && manager.peek(DOMAIN) === undefined, 'the job ended');
  await manager.close(); // waits for the stop in progress (the idle timer's)
  assert.equal(fake.count('domjobabort'), 1, 'one abort: the idle timer\'s, none by close()');
  assert.deepEqual(await readdir(path.join(dirs.runDir, 'fs-1-1')).catch(() => []), [], 'the instance folder cleaned up');
});

test('an open before the idle timer fires keeps the export (the timer re-checks), and re-arms on its release', async (t) => {
  const { fake, manager } = await setup(t);
  const first = await manager.acquire(DOMAIN, CHECKPOINT);
  first.release();
  t.mock.timers.tick(IDLE_MS - 10);
  const second = await manager.acquire(DOMAIN, CHECKPOINT);
  assert.equal(second.export, first.export, 'the same export, the same point in time');
  t.mock.timers.tick(IDLE_MS * 3);
  await settle();
  assert.equal(fake.count('domjobabort'), 0);
  assert.equal(fake.count('backup-begin'), 1);
  second.release();
  t.mock.timers.tick(IDLE_MS);
  await until(() => fake.job === undefined, 'released after the second idle period');
});

test('a failed start is forgotten: an open waiting on it, and the next one, start afresh', async (t) => {
  const { fake, manager } = await setup(t);
  fake.failBegins = 1;
  const first = manager.acquire(DOMAIN, CHECKPOINT);
  const waiting = manager.acquire(DOMAIN, CHECKPOINT);
  await assert.rejects(first, (err: unknown) => isVircptError(err) && /^domain vm1, checkpoint c1: .*unable to execute QEMU command/.test(err.message));
  const lease = await waiting;
  assert.equal(fake.count('backup-begin'), 2, 'the waiting open started again instead of sharing the failure');
  assert.equal(manager.peek(DOMAIN), lease.export);
  const next = await manager.acquire(DOMAIN, CHECKPOINT);
  assert.equal(next.export, lease.export);
  assert.equal(fake.count('backup-begin'), 2);
  lease.release();
  next.release();
});

test('a new start waits for the stop of the export before it (same socket, same job slot)', async (t) => {
  const { fake, manager } = await setup(t);
  const first = await manager.acquire(DOMAIN, CHECKPOINT);
  const before = first.export;
  first.release();
  fake.abortGate = new Gate();
  t.mock.timers.tick(IDLE_MS);
  await until(() => fake.count('domjobabort') === 1, 'the idle stop began');
  let reopened = false;
  const next = manager.acquire(DOMAIN, CHECKPOINT).then((l) => { reopened = true; return l; });
  await settle();
  assert.equal(reopened, false, 'waits while the stop runs');
  assert.equal(fake.count('backup-begin'), 1);
  fake.abortGate.open();
  const lease = await next;
  assert.notEqual(lease.export, before, 'a new export, a new point in time');
  assert.deepEqual(fake.events, ['backup-begin', 'domjobabort', 'backup-begin']);
  lease.release();
});

test('an export that went away (job gone) is replaced at the next open, after the liveness check', async (t) => {
  const { fake, manager } = await setup(t);
  const first = await manager.acquire(DOMAIN, CHECKPOINT);
  fake.job = undefined; // the VM was destroyed: libvirt ended the job
  t.mock.timers.tick(2000); // past the export's liveness check interval (Date is mocked too)
  const second = await manager.acquire(DOMAIN, CHECKPOINT);
  assert.notEqual(second.export, first.export);
  assert.equal(fake.count('backup-begin'), 2);
  first.release(); // the dead one's last close must not arm the new one's idle timer
  t.mock.timers.tick(IDLE_MS * 2);
  await settle();
  assert.ok(fake.job, 'the new export is still held');
  second.release();
});

test('close() releases every export, waits for stops in progress, and refuses new opens', async (t) => {
  const { fake, manager } = await setup(t);
  await manager.acquire(DOMAIN, CHECKPOINT);
  await manager.close();
  assert.equal(fake.job, undefined);
  assert.equal(fake.count('domjobabort'), 1);
  await manager.close(); // idempotent
  assert.equal(fake.count('domjobabort'), 1);
  await assert.rejects(manager.acquire(DOMAIN, CHECKPOINT), (err: unknown) => isVircptError(err) && err.code === 'NBD_CLOSED');
});
