// The scratch guard of remote exports. A hypervisor's scratch folder is out of statfs's reach, so
// the guard compares libvirt's own figure, the scratch space each backup job has used so far
// (domjobinfo --rawstats disk_temp_used), with a budget for the hypervisor (scratch_budget=):
// what this backup server's exports there may use together. Over it, the export using the most
// is given up (readers get EIO, its job ends and libvirt deletes its scratch files), and no
// export starts until the total is back under it.
import { VircptError, messageOf } from '../errors.js';
import { jobStats } from '../libvirt/job-stats.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import { formatBytes, GUARD_POLL_MS } from './scratch-guard.js';

const STATS_TIMEOUT_MS = 5000;

export interface Guarded { readonly domain: string }

export interface RemoteBudgetOptions<T extends Guarded> {
  virsh: Virsh;
  /** Bytes of scratch the exports of this server on the hypervisor may use together. */
  budget: number;
  log: Logger;
  intervalMs?: number | undefined;
  /** Once per export given up; the budget has stopped watching it. */
  onOver: (exp: T, message: string) => void;
}

export class RemoteScratchBudget<T extends Guarded> {
  readonly #o: RemoteBudgetOptions<T>;
  readonly #used = new Map<T, number>();
  #timer: NodeJS.Timeout | undefined;
  #polling = false;

  constructor(o: RemoteBudgetOptions<T>) {
    this.#o = o;
  }

  get used(): number {
    let sum = 0;
    for (const n of this.#used.values()) sum += n;
    return sum;
  }

  /** Refuses a new export (NO_SPACE: ENOSPC at open) while the budget is spent. */
  assertRoom(domain: string): void {
    if (this.used < this.#o.budget) return;
    throw new VircptError('NO_SPACE', `domain ${domain}: not starting an export: this server's exports on the hypervisor use ` +
      `${formatBytes(this.used)} of scratch, the scratch_budget of ${formatBytes(this.#o.budget)}; close files so that exports end, or raise scratch_budget`);
  }

  track(exp: T): void {
    this.#used.set(exp, 0);
    this.#schedule();
  }

  untrack(exp: T): void {
    this.#used.delete(exp);
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#used.clear();
  }

  #schedule(): void {
    if (this.#timer !== undefined || this.#used.size === 0) return;
    this.#timer = setTimeout(() => { this.#timer = undefined; void this.#poll(); }, this.#o.intervalMs ?? GUARD_POLL_MS);
    this.#timer.unref();
  }

  async #poll(): Promise<void> {
    if (this.#polling) return;
    this.#polling = true;
    try {
      await Promise.all([...this.#used.keys()].map(async (exp) => {
        try {
          const s = await jobStats(this.#o.virsh, exp.domain, STATS_TIMEOUT_MS);
          if (this.#used.has(exp)) this.#used.set(exp, s.running ? s.tempUsed ?? 0 : 0);
        } catch (err) {
          this.#o.log.warn({ domain: exp.domain }, `scratch budget: ${exp.domain}: ${messageOf(err)}`);
        }
      }));
      this.#enforce();
    } finally {
      this.#polling = false;
      this.#schedule();
    }
  }

  #enforce(): void {
    const total = this.used;
    if (total < this.#o.budget) return;
    let worst: T | undefined;
    for (const [exp, n] of this.#used) if (worst === undefined || n > this.#used.get(worst)!) worst = exp;
    if (worst === undefined) return;
    const n = this.#used.get(worst)!;
    this.#used.delete(worst);
    this.#o.onOver(worst, `domain ${worst.domain}: the exports on the hypervisor used ${formatBytes(total)} of scratch, over the ` +
      `scratch_budget of ${formatBytes(this.#o.budget)}; giving this export up (it used ${formatBytes(n)}) so that the host's scratch folder does not fill`);
  }
}
