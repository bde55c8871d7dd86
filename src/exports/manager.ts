// The export manager: one export per domain, started lazily by the first open() of one of its
// files, shared by every open file (reference counts), released after an idle grace period that
// re-checks when it fires (docs/exports.md). Concurrent opens share one start: the promise is
// stored, not its result, and a failed start is forgotten so the next open tries afresh.
// Each backup export of its own has a scratch guard (scratch-guard.ts) that gives it up, through
// the same stop path, before its scratch filesystem could fill.
import path from 'node:path';
import { VircptError, messageOf } from '../errors.js';
import { jobInfo } from '../libvirt/backup.js';
import { getCheckpoint } from '../libvirt/checkpoint.js';
import { blockInfo, getDomain } from '../libvirt/domain.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import { ActiveExport } from './active-export.js';
import { findLiveExport, stopExport } from './discover.js';
import type { Instance } from './runtime.js';
import { DEFAULT_SCRATCH_RESERVE, describeLow, guardOff, ScratchGuard, type LowScratch, type ScratchReserve } from './scratch-guard.js';
import { isRemoteUri } from '../libvirt/uri.js';
import { RemoteScratchBudget } from './remote-guard.js';
import type { RemoteOptions } from './remote.js';
import { startExport } from './start.js';

export interface ExportManagerOptions {
  virsh: Virsh;
  instance: Instance;
  log: Logger;
  /** Release an export this long after its last file closed (ms). */
  idleMs: number;
  scratchRoot?: string | undefined;
  /** Free space kept on the scratch filesystem (default 1 GiB). */
  scratchReserve?: ScratchReserve | undefined;
  /** How often the scratch guard looks (default GUARD_POLL_MS). */
  guardIntervalMs?: number;
  freeze?: boolean;
  /** NBD connections per disk where multi-conn is allowed. */
  connections?: number;
  /** Replace how an export is started and stopped (tests: no libvirt). */
  start?: (domain: string, checkpoint: string) => Promise<ActiveExport>;
  stop?: (exp: ActiveExport) => Promise<void>;
  /** For a remote URI: NBD over TCP settings. */
  remote?: RemoteOptions | undefined;
  /** For a remote URI: scratch bytes its exports may use together (remote-guard.ts); 0/absent: unguarded. */
  scratchBudget?: number | undefined;
}

/** Who opened the file that starts an export (the FUSE request context), when known. */
export interface Opener {
  uid: number;
  pid: number;
}

export interface Lease {
  readonly export: ActiveExport;
  /** Idempotent. */
  release(): void;
}

interface DomainSlot {
  /** The start in progress or done (shared by concurrent opens). */
  current: Promise<ActiveExport> | undefined;
  /** Its result once started. */
  ready: ActiveExport | undefined;
  idle: NodeJS.Timeout | undefined;
  /** acquire() calls in progress: while any runs, no idle timer is armed (it could stop the
   *  export that call is about to lease, across its awaits). */
  acquiring: number;
  /** Stops of this domain's earlier exports: a new start waits for them, since every export of
   *  one domain and instance uses the same socket and folders (and the same job slot). */
  stopping: Promise<void> | undefined;
}

export class ExportManager {
  readonly #o: ExportManagerOptions;
  readonly #slots = new Map<string, DomainSlot>();
  readonly #stopping = new Set<Promise<void>>();
  /** Each export is stopped once: a second stop would find the next export's job on the same socket. */
  readonly #stops = new WeakMap<ActiveExport, Promise<void>>();
  readonly #guards = new WeakMap<ActiveExport, ScratchGuard>();
  #closed: Promise<void> | undefined;
  readonly #budget: RemoteScratchBudget<ActiveExport> | undefined;

  constructor(opts: ExportManagerOptions) {
    this.#o = opts;
    this.#budget = opts.scratchBudget && isRemoteUri(opts.virsh.uri) ? new RemoteScratchBudget<ActiveExport>({
      virsh: opts.virsh, budget: opts.scratchBudget, log: opts.log, intervalMs: opts.guardIntervalMs,
      onOver: (exp, message) => this.#giveUpWith(exp, message),
    }) : undefined;
  }

  #slot(domain: string): DomainSlot {
    let s = this.#slots.get(domain);
    if (!s) this.#slots.set(domain, (s = { current: undefined, ready: undefined, idle: undefined, acquiring: 0, stopping: undefined }));
    return s;
  }

  /** The domain's export if one is up (never starts one: for stat and ls). */
  peek(domain: string): ActiveExport | undefined {
    return this.#slots.get(domain)?.ready;
  }

  /** Holds the domain's export, starting it at `checkpoint` when none runs (for `opener`). */
  async acquire(domain: string, checkpoint: string, opener?: Opener): Promise<Lease> {
    if (this.#closed) throw new VircptError('NBD_CLOSED', 'the filesystem is shutting down');
    const slot = this.#slot(domain);
    clearTimeout(slot.idle);
    slot.idle = undefined;
    slot.acquiring++;
    try {
      const exp = await this.#current(domain, slot, checkpoint, opener);
      // close() ran meanwhile and stopped it (or will): no lease on an export being stopped.
      if (this.#closed) throw new VircptError('NBD_CLOSED', 'the filesystem is shutting down');
      return this.#lease(domain, exp);
    } finally {
      // An acquire that failed may leave an unused export behind: it is released as any other.
      if (--slot.acquiring === 0 && slot.ready?.refs === 0 && slot.idle === undefined) this.#armIdle(domain, slot.ready);
    }
  }

  /** The slot's live export, started (or restarted, when it went away) as needed. */
  async #current(domain: string, slot: DomainSlot, checkpoint: string, opener?: Opener): Promise<ActiveExport> {
    let exp = slot.current ? await slot.current.catch(() => undefined) : undefined;
    if (exp && !(await exp.alive())) {
      this.#o.log.warn({ domain }, `export of ${domain} went away; starting a new one`);
      this.#forget(slot, exp);
      exp = undefined;
    }
    if (exp) return exp;
    if (!slot.current) {
      // Starting an export costs the VM (a backup job, a scratch file that grows): say who asked.
      const who = opener ? `uid ${opener.uid} (pid ${opener.pid})` : 'an unknown opener';
      this.#o.log.info({ domain, checkpoint }, `starting the export of ${domain} at checkpoint ${checkpoint} for ${who}`);
    }
    const starting = (slot.current ??= this.#start(domain, checkpoint));
    try {
      exp = await starting;
      if (slot.current === starting) slot.ready = exp;
      return exp;
    } catch (err) {
      if (slot.current === starting) slot.current = undefined;
      throw err;
    }
  }

  #lease(domain: string, exp: ActiveExport): Lease {
    exp.refs++;
    let done = false;
    return {
      export: exp,
      release: () => {
        if (done) return;
        done = true;
        // An export already dropped from its slot (it died and a newer one took over) is being
        // stopped: its last close must not touch the slot's idle timer.
        if (--exp.refs === 0 && this.#slots.get(domain)?.ready === exp) this.#armIdle(domain, exp);
      },
    };
  }

  #armIdle(domain: string, exp: ActiveExport): void {
    const slot = this.#slot(domain);
    if (slot.acquiring > 0 || this.#closed) return; // the last acquire to end arms it
    clearTimeout(slot.idle);
    slot.idle = setTimeout(() => {
      slot.idle = undefined;
      // Re-check: a file may have been opened meanwhile, or a newer export replaced this one.
      if (exp.refs === 0 && slot.ready === exp) this.#forget(slot, exp);
    }, this.#o.idleMs);
    slot.idle.unref();
  }

  /** Drops an export from its slot (if still there) and stops it in the background. */
  #forget(slot: DomainSlot, exp: ActiveExport): void {
    if (slot.ready === exp) {
      slot.ready = undefined;
      slot.current = undefined;
    }
    if (this.#stops.has(exp)) return;
    const p = this.#stopOnce(exp);
    const before = slot.stopping;
    slot.stopping = before ? Promise.all([before, p]).then(() => {}) : p;
  }

  #stopOnce(exp: ActiveExport): Promise<void> {
    let p = this.#stops.get(exp);
    if (!p) {
      const stop: Promise<void> = this.#stop(exp).finally(() => this.#stopping.delete(stop));
      this.#stops.set(exp, (p = stop));
      this.#stopping.add(stop);
    }
    return p;
  }

  async #start(domain: string, checkpointName: string): Promise<ActiveExport> {
    await this.#slot(domain).stopping;
    this.#budget?.assertRoom(domain);
    return this.#o.start ? this.#o.start(domain, checkpointName) : this.#startWithLibvirt(domain, checkpointName);
  }

  async #startWithLibvirt(domain: string, checkpointName: string): Promise<ActiveExport> {
    const { virsh, log } = this.#o;
    // Every look-up at once, the job check too (each virsh call is a process and a connection).
    const job = jobInfo(virsh, domain);
    job.catch(() => undefined); // awaited (and reported) by the start, if it gets that far
    const [dom, sizes, checkpoint] = await Promise.all([
      getDomain(virsh, domain), blockInfo(virsh, domain), getCheckpoint(virsh, domain, checkpointName),
    ]);
    const targets = checkpoint.disks.filter((d) => d.checkpoint === 'bitmap').map((d) => d.target);
    try {
      const rec = await startExport({ virsh, log, domain: dom, sizes, checkpoint, targets, instance: this.#o.instance,
        scratchRoot: this.#o.scratchRoot, scratchReserve: this.#o.scratchReserve, freeze: this.#o.freeze ?? true, job: dom.active ? job : undefined,
        remote: this.#o.remote });
      return this.#guarded(new ActiveExport(rec, false, virsh, this.#diskOptions()));
    } catch (err) {
      // Another instance of ours (a `vircpt export`, another mount) already serves it: read through.
      if (!(err instanceof VircptError) || err.code !== 'JOB_ACTIVE') throw err;
      const live = await findLiveExport(virsh, this.#o.instance.dirs, domain);
      if (!live) throw err;
      log.info({ domain, owner: live.instance.id }, `reading ${domain} through the export of instance ${live.instance.id}`);
      return new ActiveExport(live.rec, true, virsh, this.#diskOptions());
    }
  }

  /** Starts the scratch guard of a backup export of ours (unless scratch_reserve=0 turned it off). */
  #guarded(exp: ActiveExport): ActiveExport {
    const scratch = exp.rec.disks[0]?.scratch;
    const reserve = this.#o.scratchReserve ?? DEFAULT_SCRATCH_RESERVE;
    // A remote export's scratch folder is on the hypervisor, out of statfs's reach: libvirt's
    // figures against scratch_budget instead (remote-guard.ts), or unguarded without one.
    if (exp.rec.remote !== undefined) {
      this.#budget?.track(exp);
      return exp;
    }
    if (exp.rec.kind !== 'backup' || !scratch || guardOff(reserve)) return exp;
    this.#guards.set(exp, new ScratchGuard({
      virsh: this.#o.virsh, domain: exp.domain, dir: path.dirname(scratch), reserve, log: this.#o.log,
      intervalMs: this.#o.guardIntervalMs, onLow: (report) => this.#giveUp(exp, report),
    }).start());
    return exp;
  }

  /** Space runs low: readers get EIO at once, and the export is stopped the usual way (its job aborted). */
  #giveUp(exp: ActiveExport, report: LowScratch): void {
    this.#giveUpWith(exp, describeLow(report));
  }

  #giveUpWith(exp: ActiveExport, message: string): void {
    this.#o.log.error({ domain: exp.domain }, message);
    exp.giveUp(new VircptError('NBD_CLOSED', `the export of ${exp.domain} was given up: its scratch space ran low`));
    this.#forget(this.#slot(exp.domain), exp);
  }

  #diskOptions() {
    return { connections: this.#o.connections ?? 2 };
  }

  async #stop(exp: ActiveExport): Promise<void> {
    this.#guards.get(exp)?.stop();
    this.#budget?.untrack(exp);
    await exp.close();
    if (exp.borrowed) return;
    try {
      if (this.#o.stop) return await this.#o.stop(exp);
      await stopExport(this.#o.virsh, { rec: exp.rec, instance: this.#o.instance }, this.#o.log);
    } catch (err) {
      this.#o.log.error({ domain: exp.rec.domain }, `releasing the export of ${exp.rec.domain} failed: ${messageOf(err)}`);
    }
  }

  /** Releases every export (unmount, exit). Idempotent. */
  close(): Promise<void> {
    return (this.#closed ??= this.#closeAll());
  }

  async #closeAll(): Promise<void> {
    this.#budget?.stop();
    const all: Promise<void>[] = [...this.#stopping];
    for (const slot of this.#slots.values()) {
      clearTimeout(slot.idle);
      const cur = slot.current;
      slot.current = slot.ready = undefined;
      if (cur) all.push(cur.then((e) => this.#stopOnce(e), () => undefined));
    }
    await Promise.all(all);
  }
}
