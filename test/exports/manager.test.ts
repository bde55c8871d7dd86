// The export manager's idle release against acquire(): no libvirt here, the start and stop of
// an export are injected, its liveness check is held open by the test, and the idle timer is
// node:test's mock clock, so each interleaving is produced exactly, not by timing.
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ActiveExport } from '../../src/exports/active-export.js';
import type { ExportRecord } from '../../src/exports/export.js';
import { ExportManager } from '../../src/exports/manager.js';
import { Instance } from '../../src/exports/runtime.js';
import type { Virsh } from '../../src/libvirt/virsh.js';
import { silentLogger } from '../../src/log.js';

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

function setup(t: TestContext) {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const started: FakeExport[] = [];
  const manager = new ExportManager({
    virsh: {} as Virsh, instance: new Instance('fs-1-1', { runDir: '/nonexistent', scratchRoot: '/nonexistent' }),
    log: silentLogger(), idleMs: IDLE_MS,
    start: async () => { const e = new FakeExport(started.length + 1); started.push(e); return e; },
    stop: async (exp) => { (exp as FakeExport).stopped = true; },
  });
  t.after(() => manager.close());
  return { manager, started };
}

/** Lets the manager's pending promise callbacks (a stop in the background) run. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

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
