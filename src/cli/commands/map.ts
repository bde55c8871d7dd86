// vircpt map: per disk, the extents changed since a checkpoint (or, with --base, the allocation
// extents), in the shape `nbdinfo --map --json` prints.
import { BASE_ALLOCATION } from '../../exports/nbd-disk.js';
import { sameType, toMapExtents, type DirtyMap, type MapExtent } from '../../exports/dirty-map.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from '../../nbd/constants.js';
import { appendRun, type Extent } from '../../nbd/extents.js';
import { printJson, type Ctx } from '../context.js';
import { withExport } from '../use-export.js';

/** base:allocation extents as nbdinfo describes them: type = the flags, neighbours merged. */
export function allocationExtents(extents: readonly Extent[]): MapExtent[] {
  const out: MapExtent[] = [];
  for (const e of extents) {
    const words = [e.flags & NBD_STATE_HOLE ? 'hole' : '', e.flags & NBD_STATE_ZERO ? 'zero' : ''].filter(Boolean);
    appendRun(out, { offset: e.offset, length: e.length, type: e.flags, description: words.length ? words.join(',') : 'data' }, sameType);
  }
  return out;
}

export async function mapCmd(ctx: Ctx, name: string, base: boolean, json: boolean): Promise<void> {
  const map = await withExport(ctx, name, async ({ exp, targets }) => {
    const disks: DirtyMap['disks'] = {};
    for (const t of targets) {
      const disk = await exp.disk(t);
      const context = base ? BASE_ALLOCATION : exp.dirtyContext(name, t);
      const extents = await disk.extents(context, ctx.signal);
      disks[t] = { size: disk.size, extents: base ? allocationExtents(extents) : toMapExtents(extents, disk.size) };
    }
    return { domain: exp.domain, checkpoint: name, exportedAt: exp.rec.startedAt, disks };
  });
  if (json) return printJson(ctx, map);
  for (const [target, d] of Object.entries(map.disks)) {
    ctx.stdout(`${target} (${d.size} bytes), ${base ? 'allocation' : `changed since ${name}`}:\n`);
    for (const e of d.extents) {
      ctx.stdout(`${String(e.offset).padStart(14)} ${String(e.length).padStart(14)} ${String(e.type).padStart(3)}  ${e.description}\n`);
    }
  }
}
