// How map and copy reach a domain's data: through an export of ours that already runs (a
// vircptfs mount's, or `vircpt export`'s; it stays running), or through one of their own,
// released when they finish, also on Ctrl-C (docs/exports.md "When the owner is gone").
import path from 'node:path';
import { VircptError } from '../errors.js';
import { ActiveExport } from '../exports/active-export.js';
import { findExports, findLiveExport, stopExport } from '../exports/discover.js';
import type { ExportRecord } from '../exports/export.js';
import { Instance } from '../exports/runtime.js';
import { DEFAULT_SCRATCH_RESERVE, describeLow, guardOff, ScratchGuard } from '../exports/scratch-guard.js';
import { RemoteScratchBudget } from '../exports/remote-guard.js';
import { startExport } from '../exports/start.js';
import { jobInfo } from '../libvirt/backup.js';
import { getCheckpoint } from '../libvirt/checkpoint.js';
import { remoteOptions, selectDisks, type Ctx } from './context.js';

export interface ExportUse {
  exp: ActiveExport;
  /** The selected disks that this export serves. */
  targets: string[];
  /** Whether we started it (and so release it). */
  own: boolean;
}

/** What the caller of withExport gets: the export, and a way to let it go before it returns. */
export interface HeldExport extends ExportUse {
  /**
   * The caller reads no more: the export is closed (and released, when ours) from now on, while
   * the caller finishes its own work (a copy's last writes and its fdatasync). withExport still
   * waits for it before returning, and reports its failure. Idempotent.
   */
  release(): void;
}

/** An export in use, with the instance that started it when that is us. */
type Opened = ExportUse & { instance?: Instance };

/**
 * How map and copy read: 2 connections, each with 2 reads of 1 MiB in flight. A copy streams
 * the disk, and against the client's 8 x 256 KiB (made for the filesystem's bursts of reads)
 * these took half the time and CPU, ours and QEMU's, without QEMU's page faults growing much
 * (docs/benchmarks.md, "Start-up of vircpt").
 */
const NBD_OPTIONS = { connections: 2, requestSize: 1024 * 1024, maxInFlight: 2 } as const;

export async function withExport<T>(ctx: Ctx, checkpointName: string, fn: (use: HeldExport) => Promise<T>): Promise<T> {
  const { instance, ...use } = (await throughRunningExport(ctx, checkpointName)) ?? (await lookUpAndStart(ctx, checkpointName));
  const guard = instance && guardOf(ctx, use.exp);
  let released: Promise<void> | undefined;
  const release = (): Promise<void> => {
    if (!released) {
      released = (async () => {
        guard?.stop();
        await use.exp.close();
        if (instance) await stopExport(ctx.virsh, { rec: use.exp.rec, instance }, ctx.log);
      })();
      released.catch(() => undefined); // awaited (and reported) below
    }
    return released;
  };
  try {
    return await fn({ ...use, release: () => void release() });
  } finally {
    await release();
  }
}

/** The scratch guard of our own backup export: space running low fails the reads (the guest first). */
function guardOf(ctx: Ctx, exp: ActiveExport): { stop(): void } | undefined {
  const reserve = ctx.opts.scratchReserve ?? DEFAULT_SCRATCH_RESERVE;
  const scratch = exp.rec.disks[0]?.scratch;
  // A remote export's scratch folder is on the hypervisor, out of statfs's reach: libvirt's
  // figures against --scratch-budget instead, or unguarded (docs/remote.md).
  if (exp.rec.remote !== undefined) {
    if (!ctx.opts.scratchBudget) return undefined;
    const budget = new RemoteScratchBudget<ActiveExport>({
      virsh: ctx.virsh, budget: ctx.opts.scratchBudget, log: ctx.log,
      onOver: (e, message) => e.giveUp(new VircptError('NBD_CLOSED', message)),
    });
    budget.track(exp);
    return budget;
  }
  if (exp.rec.kind !== 'backup' || !scratch || guardOff(reserve)) return undefined;
  return new ScratchGuard({
    virsh: ctx.virsh, domain: exp.domain, dir: path.dirname(scratch), reserve, log: ctx.log,
    onLow: (report) => exp.giveUp(new VircptError('NBD_CLOSED', describeLow(report))),
  }).start();
}

/**
 * A running export of ours, asking libvirt nothing when its record settles the request: the
 * disks named by -i/-x are all in it, and the checkpoint is the one it was started at (or whose
 * bitmap it carries). Its NBD servers accepting our connections is the proof that it still
 * serves (a job or qemu-nbd that went away refuses them). Anything else: undefined, and the
 * caller asks libvirt (which also words the errors).
 */
async function throughRunningExport(ctx: Ctx, checkpointName: string): Promise<Opened | undefined> {
  const found = (await findExports(ctx.dirs, ctx.domainName)).find((f) => f.ownerAlive);
  if (!found) return undefined;
  const served = found.rec.disks.map((d) => d.target);
  const { include, exclude } = ctx.opts;
  if ([...(include ?? []), ...(exclude ?? [])].some((t) => !served.includes(t))) return undefined;
  const targets = served.filter((t) => (!include?.length || include.includes(t)) && !exclude?.includes(t));
  if (targets.length === 0) return undefined;
  // A checkpoint the record does not name: libvirt says whether it exists, meanwhile we connect.
  const known = found.rec.checkpoint === checkpointName || found.rec.disks.some((d) => Object.hasOwn(d.dirtyContexts, checkpointName));
  const checkpoint = known ? undefined : getCheckpoint(ctx.virsh, ctx.domainName, checkpointName);
  checkpoint?.catch(() => undefined); // awaited below
  const exp = new ActiveExport(found.rec, true, ctx.virsh, NBD_OPTIONS);
  try {
    const serving = await Promise.all(targets.map((t) => exp.disk(t))).then(() => true, () => false);
    await checkpoint;
    if (!serving) {
      await exp.close();
      return undefined;
    }
  } catch (err) {
    await exp.close();
    throw err;
  }
  ctx.log.info(`reading ${exp.domain} through the running export of instance ${found.instance.id}`);
  return { exp, targets, own: false };
}

/** libvirt's view of the domain and checkpoint; a running export of ours, or one of our own. */
async function lookUpAndStart(ctx: Ctx, checkpointName: string): Promise<Opened> {
  // Independent libvirt look-ups, at once, the job check too (a backup-begin while another job
  // runs would wait 30 s for libvirt's job lock before failing, so the check comes first).
  const job = jobInfo(ctx.virsh, ctx.domainName);
  job.catch(() => undefined); // awaited (and reported) by the start, if it gets that far
  const [sel, checkpoint, live] = await Promise.all([
    selectDisks(ctx),
    getCheckpoint(ctx.virsh, ctx.domainName, checkpointName),
    findLiveExport(ctx.virsh, ctx.dirs, ctx.domainName),
  ]);
  let rec: ExportRecord;
  let instance: Instance | undefined;
  if (live) {
    ctx.log.info(`reading ${sel.domain.name} through the running export of instance ${live.instance.id}`);
    rec = live.rec;
  } else {
    instance = Instance.of('cli', ctx.dirs);
    rec = await startExport({
      virsh: ctx.virsh, log: ctx.log, domain: sel.domain, sizes: sel.sizes, checkpoint, targets: sel.targets,
      instance, scratchRoot: ctx.opts.scratchdir, scratchReserve: ctx.opts.scratchReserve, remote: remoteOptions(ctx.opts),
      job: sel.domain.active ? job : undefined,
    });
  }
  const exp = new ActiveExport(rec, !!live, ctx.virsh, NBD_OPTIONS);
  const targets = sel.targets.filter((t) => exp.hasDisk(t));
  if (targets.length === 0) {
    await exp.close();
    if (instance) await stopExport(ctx.virsh, { rec, instance }, ctx.log);
    throw new VircptError('DISK_NOT_FOUND', `domain ${sel.domain.name}: the running export serves none of the selected disks`);
  }
  return { exp, targets, own: !live, ...(instance && { instance }) };
}
