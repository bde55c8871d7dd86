// How map and copy reach a domain's data: through an export of ours that already runs (a
// vircptfs mount's, or `vircpt export`'s; it stays running), or through one of their own,
// released when they finish, also on Ctrl-C (DESIGN.md "Ownership of exports").
import { VircptError } from '../errors.js';
import { ActiveExport } from '../exports/active-export.js';
import { findLiveExport, stopExport } from '../exports/discover.js';
import { Instance } from '../exports/runtime.js';
import { startExport } from '../exports/start.js';
import { getCheckpoint, type Checkpoint } from '../libvirt/checkpoint.js';
import { selectDisks, type Ctx, type SelectedDomain } from './context.js';

export interface ExportUse {
  exp: ActiveExport;
  sel: SelectedDomain;
  checkpoint: Checkpoint;
  /** The selected disks that this export serves. */
  targets: string[];
  /** Whether we started it (and so release it). */
  own: boolean;
}

export async function withExport<T>(ctx: Ctx, checkpointName: string, fn: (use: ExportUse) => Promise<T>): Promise<T> {
  // Independent libvirt look-ups, at once: each virsh call costs tens of milliseconds.
  const [sel, checkpoint, live] = await Promise.all([
    selectDisks(ctx),
    getCheckpoint(ctx.virsh, ctx.domainName, checkpointName),
    findLiveExport(ctx.virsh, ctx.dirs, ctx.domainName),
  ]);
  let instance: Instance | undefined;
  let exp: ActiveExport;
  if (live) {
    ctx.log.info(`reading ${sel.domain.name} through the running export of instance ${live.instance.id}`);
    exp = new ActiveExport(live.rec, true, ctx.virsh, { connections: 2 });
  } else {
    instance = Instance.of('cli', ctx.dirs);
    const rec = await startExport({
      virsh: ctx.virsh, log: ctx.log, domain: sel.domain, sizes: sel.sizes, checkpoint, targets: sel.targets,
      instance, scratchRoot: ctx.opts.scratchdir,
    });
    exp = new ActiveExport(rec, false, ctx.virsh, { connections: 2 });
  }
  try {
    const targets = sel.targets.filter((t) => exp.hasDisk(t));
    if (targets.length === 0) {
      throw new VircptError('DISK_NOT_FOUND', `domain ${sel.domain.name}: the running export serves none of the selected disks`);
    }
    return await fn({ exp, sel, checkpoint, targets, own: instance !== undefined });
  } finally {
    await exp.close();
    if (instance) await stopExport(ctx.virsh, { rec: exp.rec, instance }, ctx.log);
  }
}
