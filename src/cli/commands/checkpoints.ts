// vircpt create / list / delete: the checkpoints themselves (a bitmap per disk, no data).
import { VircptError } from '../../errors.js';
import { agentAvailable } from '../../libvirt/agent.js';
import {
  checkpointXml, createCheckpoint, deleteCheckpoint, getCheckpoint, listCheckpoints, type Checkpoint,
} from '../../libvirt/checkpoint.js';
import { getDomain } from '../../libvirt/domain.js';
import { printJson, selectDisks, type Ctx } from '../context.js';

export async function createCmd(ctx: Ctx, name: string): Promise<void> {
  const { domain, targets } = await selectDisks(ctx);
  if (!domain.active) {
    throw new VircptError('DOMAIN_NOT_RUNNING',
      `domain ${domain.name} is shut off: libvirt creates checkpoints only on a running domain (start it; paused is enough)`);
  }
  const quiesce = await agentAvailable(ctx.virsh, domain);
  if (!quiesce) ctx.log.warn(`domain ${domain.name}: guest agent not reachable, no filesystem freeze (crash-consistent checkpoint)`);
  const xml = checkpointXml(name, domain.disks, new Set(targets));
  try {
    await createCheckpoint(ctx.virsh, domain.name, xml, { quiesce });
  } catch (err) {
    if (err instanceof VircptError && err.code === 'CHECKPOINT_EXISTS') {
      throw new VircptError('CHECKPOINT_EXISTS', `domain ${domain.name} already has a checkpoint ${name}`, { cause: err });
    }
    throw wrap(err, `domain ${domain.name}, checkpoint ${name}`);
  }
  ctx.stdout(`created checkpoint ${name} of ${domain.name} (disks: ${targets.join(', ')})\n`);
}

function wrap(err: unknown, where: string): unknown {
  return err instanceof VircptError ? new VircptError(err.code, `${where}: ${err.message}`, { cause: err }) : err;
}

export interface CheckpointSummary {
  name: string;
  parent: string | null;
  created: string;
  disks: string[];
}

function summary(c: Checkpoint): CheckpointSummary {
  return {
    name: c.name,
    parent: c.parent ?? null,
    created: new Date(c.creationTime * 1000).toISOString(),
    disks: c.disks.filter((d) => d.checkpoint === 'bitmap').map((d) => d.target),
  };
}

export async function listCmd(ctx: Ctx, json: boolean): Promise<void> {
  await getDomain(ctx.virsh, ctx.domainName).catch((err: unknown) => { throw wrap(err, `domain ${ctx.domainName}`); });
  const list = (await listCheckpoints(ctx.virsh, ctx.domainName)).map(summary);
  if (json) return printJson(ctx, list);
  if (list.length === 0) return ctx.stdout(`domain ${ctx.domainName} has no checkpoints\n`);
  const rows = [['NAME', 'PARENT', 'CREATED', 'DISKS'], ...list.map((c) => [c.name, c.parent ?? '-', c.created, c.disks.join(',')])];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) ctx.stdout(`${r.map((v, i) => (i < r.length - 1 ? v.padEnd(widths[i]!) : v)).join('  ')}\n`);
}

export async function deleteCmd(ctx: Ctx, name: string, metadataOnly: boolean): Promise<void> {
  const domain = await getDomain(ctx.virsh, ctx.domainName).catch((err: unknown) => { throw wrap(err, `domain ${ctx.domainName}`); });
  await getCheckpoint(ctx.virsh, domain.name, name);
  if (!domain.active && !metadataOnly) {
    throw new VircptError('DOMAIN_NOT_RUNNING',
      `domain ${domain.name} is shut off: libvirt can merge checkpoint ${name}'s bitmaps into its parent only on a running domain; ` +
      'start it (paused is enough), or use --metadata to forget the checkpoint and leave its bitmaps in the images');
  }
  try {
    await deleteCheckpoint(ctx.virsh, domain.name, name, { metadataOnly });
  } catch (err) {
    throw wrap(err, `domain ${domain.name}, checkpoint ${name}`);
  }
  ctx.stdout(`deleted checkpoint ${name} of ${domain.name}${metadataOnly ? ' (metadata only: bitmaps left in the images)' : ''}\n`);
}
