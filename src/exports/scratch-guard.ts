// The scratch guard: the guest comes first (docs/scratch-guard.md). While a pull-mode backup job
// runs, every guest write to a block not yet copied is first copied into the job's scratch
// image; libvirt 9.0 starts that job as blockdev-backup sync=none, whose copy-before-write filter
// keeps QEMU's default on-cbw-error=break-guest-write, so a full scratch filesystem fails the
// guest's own write. Nothing on this stack makes the snapshot break instead, so the guard
// watches the scratch filesystem's free space (statfs) and libvirt's own figure (domjobinfo)
// and gives the export up while free space is still above zero: below the reserve.
import { constants } from 'node:fs';
import { access, statfs } from 'node:fs/promises';
import { VircptError, messageOf } from '../errors.js';
import { jobStats, type JobStats } from '../libvirt/job-stats.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';

/** Bytes to keep free on the scratch filesystem, or a percentage of its size. */
export type ScratchReserve = { bytes: number } | { percent: number };

/** 1 GiB: a guest writing new blocks at up to ~1.5 GiB/s is stopped in time (the docs say why). */
export const DEFAULT_SCRATCH_RESERVE: ScratchReserve = { bytes: 2 ** 30 };
/** How often the guard looks at free space (statfs: microseconds, no libvirt call). */
export const GUARD_POLL_MS = 500;
const STATS_TIMEOUT_MS = 5000;

/** scratch_reserve=0 (or 0%): no guard, no check at open. */
export function guardOff(r: ScratchReserve): boolean {
  return ('bytes' in r ? r.bytes : r.percent) === 0;
}

export function reserveBytes(r: ScratchReserve, fsSize: number): number {
  return 'bytes' in r ? r.bytes : Math.ceil((fsSize * r.percent) / 100);
}

export function formatReserve(r: ScratchReserve): string {
  return 'bytes' in r ? formatBytes(r.bytes) : `${r.percent}%`;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

export interface ScratchSpace {
  /** Bytes an unprivileged writer (QEMU runs as its own user) may still use. */
  free: number;
  size: number;
}

export async function scratchSpace(dir: string): Promise<ScratchSpace> {
  const s = await statfs(dir);
  return { free: s.bavail * s.bsize, size: s.blocks * s.bsize };
}

/**
 * A scratch folder named by the user (scratch=, --scratchdir) must exist and be writable before
 * anything is made: a missing one is never created, since it may be a filesystem not mounted
 * yet (its scratch would fill the one below), and a failure here leaves no folder and no job.
 */
export async function assertScratchFolder(root: string, domain: string): Promise<void> {
  try {
    await access(root, constants.W_OK | constants.X_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'does not exist' : code === 'EROFS' ? 'is on a read-only filesystem' : `cannot be written (${code ?? messageOf(err)})`;
    throw new VircptError('IO', `domain ${domain}: not starting an export: the scratch folder ${root} ${why}`);
  }
}

/** Refuses to start an export (NO_SPACE: ENOSPC at open) while the scratch filesystem is below the reserve. */
export async function assertScratchRoom(dir: string, reserve: ScratchReserve, domain: string): Promise<void> {
  const space = await scratchSpace(dir);
  const want = reserveBytes(reserve, space.size);
  if (space.free >= want) return;
  throw new VircptError('NO_SPACE',
    `domain ${domain}: not starting an export: the scratch filesystem of ${dir} has ${formatBytes(space.free)} free, ` +
    `below the scratch reserve of ${formatReserve(reserve)}${'percent' in reserve ? ` (${formatBytes(want)})` : ''}; free space there, or set scratch_reserve`);
}

export interface LowScratch {
  domain: string;
  dir: string;
  free: number;
  reserve: number;
  /** libvirt's figures, when it answered. */
  stats: JobStats | undefined;
}

/** The log line of a guard that gave an export up: which domain, scratch used, space free. */
export function describeLow(r: LowScratch): string {
  const used = r.stats?.tempUsed === undefined ? 'an unknown amount' : formatBytes(r.stats.tempUsed);
  const total = r.stats?.tempTotal === undefined ? '' : ` (of at most ${formatBytes(r.stats.tempTotal)})`;
  return `domain ${r.domain}: scratch space ran low, giving the export up so that the guest's writes do not fail: ` +
    `the backup job used ${used} of scratch${total}, ${formatBytes(r.free)} free in ${r.dir}, reserve ${formatBytes(r.reserve)}`;
}

export type GuardVerdict = { kind: 'ok' } | { kind: 'gone' } | { kind: 'low'; report: LowScratch };

export interface ScratchGuardOptions {
  virsh: Virsh;
  domain: string;
  /** The folder holding the job's scratch images. */
  dir: string;
  reserve: ScratchReserve;
  log: Logger;
  intervalMs?: number;
  /** Ask libvirt at every poll, to notice the job's end (the watcher of `vircpt export`); else only when low. */
  watchJob?: boolean;
  /** Once, when space runs low; the guard has stopped polling. */
  onLow: (report: LowScratch) => void | Promise<void>;
  /** Once, when libvirt reports no job any more (watchJob) or the scratch folder is gone. */
  onGone?: () => void;
}

/** One look: free space first (no libvirt call while it is above the reserve). */
export async function checkScratch(o: Pick<ScratchGuardOptions, 'virsh' | 'domain' | 'dir' | 'reserve' | 'watchJob'>): Promise<GuardVerdict> {
  let space: ScratchSpace;
  try {
    space = await scratchSpace(o.dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'gone' }; // released: folder removed
    throw err;
  }
  const reserve = reserveBytes(o.reserve, space.size);
  const low = space.free < reserve;
  if (!low && !o.watchJob) return { kind: 'ok' };
  // A failed question is no answer: when low, give up anyway (the guest first). But a domain
  // that is gone or shut off has no job any more: nothing left to guard.
  let domainGone = false;
  const stats = await jobStats(o.virsh, o.domain, STATS_TIMEOUT_MS).catch((err: unknown) => {
    domainGone = err instanceof VircptError && (err.code === 'DOMAIN_NOT_FOUND' || err.code === 'DOMAIN_NOT_RUNNING');
    return undefined;
  });
  if (domainGone || (stats && !stats.running)) return { kind: 'gone' };
  if (!low) return { kind: 'ok' };
  // Every block already copied: the scratch cannot grow any more, nothing to protect.
  if (stats?.tempUsed !== undefined && stats.tempTotal !== undefined && stats.tempUsed >= stats.tempTotal) return { kind: 'ok' };
  return { kind: 'low', report: { domain: o.domain, dir: o.dir, free: space.free, reserve, stats } };
}

/** Polls checkScratch until space runs low, the job ends, or stop(). */
export class ScratchGuard {
  readonly #o: ScratchGuardOptions;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(o: ScratchGuardOptions) {
    this.#o = o;
  }

  start(): this {
    this.#schedule();
    return this;
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.#poll(), this.#o.intervalMs ?? GUARD_POLL_MS);
    this.#timer.unref();
  }

  async #poll(): Promise<void> {
    let v: GuardVerdict;
    try {
      v = await checkScratch(this.#o);
    } catch (err) {
      this.#o.log.warn({ domain: this.#o.domain }, `scratch guard of ${this.#o.domain}: ${messageOf(err)}`);
      v = { kind: 'ok' };
    }
    if (this.#stopped) return;
    if (v.kind === 'ok') return this.#schedule();
    this.stop();
    if (v.kind === 'gone') return this.#o.onGone?.();
    try {
      await this.#o.onLow(v.report);
    } catch (err) {
      this.#o.log.error({ domain: this.#o.domain }, `scratch guard of ${this.#o.domain}: giving the export up failed: ${messageOf(err)}`);
    }
  }
}
