// The export manager (src/exports/manager.ts) without libvirt: the start and stop of an export
// are injected (fakes of exports, named so), liveness checks and starts and stops can be held
// open by the test, and the idle timer is node:test's mock clock, so each interleaving is
// produced exactly, not by timing. Shared starts, reference counts, the idle release and its
// re-check, failed starts, stop chaining, dead exports, close(), and the acquire/idle race.
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { isVircptError, VircptError } from '../../src/errors.js';
import { ActiveExport } from '../../src/exports/active-export.js';
import type { ExportRecord } from '../../src/exports/export.js';
import { ExportManager } from '../../src/exports/manager.js';
import { Instance } from '../../src/exports/runtime.js';
import type { Virsh } from '../../src/libvirt/virsh.js';
import { silentLogger } from '../silent-logger.js';

const IDLE_MS = 1000;

interface Deferred<T> { promise: Promise<T>; resolve(v: T): void }
function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => { resolve = r; });
  return { promise, resolve };
}

/** An export whose alive() answers only when the test says so. */
class FakeExport extends ActiveExport {
  #gate: Deferred<boolean> | undefined;
  #asked: Deferred<void> = deferred();
  stopped = false;

  constructor(n: number) {
    const rec: ExportRecord = { domain: 'vm', kind: 'qemu-nbd', owner: 'test', checkpoint: undefined,
      startedAt: new Date(n * 1000).toISOString(), scratchRoot: undefined, disks: [] };
    super(rec, false, {} as Virsh, {});
  }

  /** From now on alive() waits for answer(). */
  hold(): void { this.#gate = deferred(); this.#asked = deferred(); }
  answer(alive: boolean): void { this.#gate?.resolve(alive); this.#gate = undefined; }
  /** Settles once alive() was called while held. */
  get asked(): Promise<void> { return this.#asked.promise; }

  override alive(): Promise<boolean> {
    this.#asked.resolve();
    return this.#gate ? this.#gate.promise : Promise.resolve(!this.stopped);
  }
}

interface Hooks {
  /** When set, starts wait for it. */
  startGate?: Deferred<void>;
  /** When set, stops wait for it. */
  stopGate?: Deferred<void>;
  /** Starts still to fail. */
  failStarts?: number;
  /** 'start' and 'stop' in the order they began. */
  events: string[];
}

function setup(t: TestContext) {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const started: FakeExport[] = [];
  const hooks: Hooks = { events: [] };
  const manager = new ExportManager({
    virsh: {} as Virsh, instance: new Instance('fs-1-1', { runDir: '/nonexistent', scratchRoot: '/nonexistent' }),
    log: silentLogger(), idleMs: IDLE_MS,
    start: async () => {
      hooks.events.push('start');
      await hooks.startGate?.promise;
      if (hooks.failStarts) {
        hooks.failStarts--;
        throw new VircptError('LIBVIRT', 'unable to execute QEMU command (fake)');
      }
      const e = new FakeExport(started.length + 1);
      started.push(e);
      return e;
    },
    stop: async (exp) => {
      hooks.events.push('stop');
      await hooks.stopGate?.promise;
      (exp as FakeExport).stopped = true;
    },
  });
  t.after(() => manager.close());
  return { manager, started, hooks };
}

/** Lets the manager's pending promise callbacks (a stop in the background) run. */
const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));
};

describe('ExportManager: idle release and acquire', () => {
  it('a release while an acquire checks liveness does not stop the export that acquire leases', async (t) => {
    const { manager, started } = setup(t);
    const first = await manager.acquire('vm', 'c1');
    const exp = started[0]!;
    exp.hold();
    const second = manager.acquire('vm', 'c1');
    await exp.asked; // the acquire now waits inside alive()
    first.release(); // the last lease of the export ends meanwhile
    t.mock.timers.tick(IDLE_MS); // ...and a whole idle period passes
    await settle();
    exp.answer(true);
    const lease = await second;
    await settle();
    assert.equal(lease.export, exp, 'the running export is leased');
    assert.equal(exp.stopped, false, 'the export leased was not stopped');
    assert.equal(started.length, 1, 'no second export was started');
    // The idle release still works once the lease ends.
    lease.release();
    t.mock.timers.tick(IDLE_MS);
    await settle();
    assert.equal(exp.stopped, true, 'released idle after the last lease');
  });

  it('no idle stop while an acquire runs; a close meanwhile fails that acquire and stops the export', async (t) => {
    const { manager, started } = setup(t);
    (await manager.acquire('vm', 'c1')).release();
    const exp = started[0]!;
    exp.hold();
    const second = manager.acquire('vm', 'c1').then(() => 'leased', (e: { code?: string }) => e.code);
    await exp.asked;
    t.mock.timers.tick(IDLE_MS);
    await settle();
    assert.equal(exp.stopped, false, 'no idle stop while an acquire runs');
    const closed = manager.close();
    exp.answer(true);
    assert.equal(await second, 'NBD_CLOSED', 'no lease on an export being stopped');
    await closed;
    assert.equal(exp.stopped, true, 'close stopped it');
  });

  it('an export that went away is replaced; the old one is stopped', async (t) => {
    const { manager, started } = setup(t);
    const first = await manager.acquire('vm', 'c1');
    started[0]!.stopped = true; // its server went away
    const second = await manager.acquire('vm', 'c1');
    assert.equal(started.length, 2);
    assert.equal(second.export, started[1]);
    first.release();
    second.release();
    t.mock.timers.tick(IDLE_MS);
    await settle();
    assert.equal(started[1]!.stopped, true, 'the new one is released when idle');
  });
});

describe('ExportManager: starts, leases, idle release, stops', () => {
  it('concurrent opens share one start; the export stays while any lease is held', async (t) => {
    const { manager, started, hooks } = setup(t);
    hooks.startGate = deferred();
    const opens = [manager.acquire('vm', 'c1'), manager.acquire('vm', 'c1'), manager.acquire('vm', 'c1')];
    await settle();
    hooks.startGate.resolve();
    const leases = await Promise.all(opens);
    assert.deepEqual(hooks.events, ['start'], 'one start for three opens');
    assert.ok(leases.every((l) => l.export === started[0]));
    assert.equal(started[0]!.refs, 3);
    assert.equal(manager.peek('vm'), started[0]);
    leases[0]!.release();
    leases[0]!.release(); // idempotent
    leases[1]!.release();
    assert.equal(started[0]!.refs, 1);
    t.mock.timers.tick(IDLE_MS * 3);
    await settle();
    assert.equal(started[0]!.stopped, false, 'held by the third lease');
  });

  it('the last release arms the idle timer, which stops the export when it fires', async (t) => {
    const { manager, started } = setup(t);
    (await manager.acquire('vm', 'c1')).release();
    t.mock.timers.tick(IDLE_MS - 1);
    await settle();
    assert.equal(started[0]!.stopped, false, 'not before idle');
    t.mock.timers.tick(1);
    await settle();
    assert.equal(started[0]!.stopped, true);
    assert.equal(manager.peek('vm'), undefined);
  });

  it('an open before the idle timer fires keeps the export, and its release arms the timer again', async (t) => {
    const { manager, started } = setup(t);
    const first = await manager.acquire('vm', 'c1');
    first.release();
    t.mock.timers.tick(IDLE_MS - 10);
    const second = await manager.acquire('vm', 'c1');
    assert.equal(second.export, first.export, 'the same export, the same point in time');
    t.mock.timers.tick(IDLE_MS * 3);
    await settle();
    assert.equal(started[0]!.stopped, false);
    assert.equal(started.length, 1);
    second.release();
    t.mock.timers.tick(IDLE_MS);
    await settle();
    assert.equal(started[0]!.stopped, true, 'released after the second idle period');
  });

  it('a failed start is forgotten: an open waiting on it, and the next one, start afresh', async (t) => {
    const { manager, started, hooks } = setup(t);
    hooks.failStarts = 1;
    const first = manager.acquire('vm', 'c1');
    const waiting = manager.acquire('vm', 'c1');
    await assert.rejects(first, (err: unknown) => isVircptError(err) && err.code === 'LIBVIRT');
    const lease = await waiting;
    assert.deepEqual(hooks.events, ['start', 'start'], 'the waiting open started again instead of sharing the failure');
    assert.equal(lease.export, started[0]);
    assert.equal((await manager.acquire('vm', 'c1')).export, started[0]);
    assert.equal(hooks.events.length, 2);
  });

  it('a new start waits for the stop of the export before it (same socket, same job slot)', async (t) => {
    const { manager, started, hooks } = setup(t);
    (await manager.acquire('vm', 'c1')).release();
    hooks.stopGate = deferred();
    t.mock.timers.tick(IDLE_MS);
    await settle();
    assert.deepEqual(hooks.events, ['start', 'stop'], 'the idle stop began');
    let reopened = false;
    const next = manager.acquire('vm', 'c1').then((l) => { reopened = true; return l; });
    await settle();
    assert.equal(reopened, false, 'waits while the stop runs');
    assert.deepEqual(hooks.events, ['start', 'stop']);
    hooks.stopGate.resolve();
    const lease = await next;
    assert.equal(lease.export, started[1], 'a new export, a new point in time');
    assert.deepEqual(hooks.events, ['start', 'stop', 'start']);
  });

  it('close() stops every export once, waits for stops in progress, and refuses new opens', async (t) => {
    const { manager, started, hooks } = setup(t);
    await manager.acquire('vm', 'c1');
    await manager.acquire('other', 'c1');
    await manager.close();
    assert.deepEqual(started.map((e) => e.stopped), [true, true]);
    await manager.close(); // idempotent
    assert.deepEqual(hooks.events.filter((e) => e === 'stop'), ['stop', 'stop']);
    await assert.rejects(manager.acquire('vm', 'c1'), (err: unknown) => isVircptError(err) && err.code === 'NBD_CLOSED');
  });
});
