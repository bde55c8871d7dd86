// vircpt info: what the running export of a domain offers over NBD. Never starts one.
import { VircptError } from '../../errors.js';
import { findLiveExport } from '../../exports/discover.js';
import { nbdUri } from '../../exports/export.js';
import { whereToConnect } from '../../exports/nbd-disk.js';
import { NbdClient } from '../../nbd/index.js';
import { reconcile } from '../../exports/attachments.js';
import { printJson, type Ctx } from '../context.js';
import { describeAttachment } from './hotadd.js';

export async function infoCmd(ctx: Ctx, json: boolean): Promise<void> {
  const live = await findLiveExport(ctx.virsh, ctx.dirs, ctx.domainName);
  if (!live) {
    throw new VircptError('NO_EXPORT', `domain ${ctx.domainName} has no running export (start one with vircpt export --name N, or open a file of a vircptfs mount)`);
  }
  const { rec } = live;
  const disks = [];
  for (const d of rec.disks) {
    const client = await NbdClient.connect({ ...whereToConnect(rec, d), exportName: d.exportName, metaContexts: ['base:allocation', ...Object.values(d.dirtyContexts)], signal: ctx.signal });
    try {
      disks.push({
        target: d.target, uri: nbdUri(d, rec.remote), exportName: d.exportName, size: client.size,
        contexts: [...client.contexts.keys()], dirtyContexts: d.dirtyContexts,
        blockSize: client.blockSize, readOnly: client.readOnly, canMultiConn: client.canMultiConn,
        transmissionFlags: client.transmissionFlags,
      });
    } finally {
      await client.close();
    }
  }
  const { attachments = [] } = await reconcile(ctx.virsh, live.instance.domainDir(rec.domain), rec, ctx.log);
  const info = { domain: rec.domain, kind: rec.kind, owner: rec.owner, checkpoint: rec.checkpoint ?? null, startedAt: rec.startedAt, disks, attachments };
  if (json) return printJson(ctx, info);
  ctx.stdout(`${rec.domain}: ${rec.kind === 'backup' ? `backup job at checkpoint ${rec.checkpoint}` : 'qemu-nbd (shut off)'}, ` +
    `started ${rec.startedAt} by ${rec.owner === 'export' ? `vircpt ${rec.startedBy ?? 'export'}` : `instance ${rec.owner}`}\n`);
  for (const d of disks) {
    ctx.stdout(`  ${d.target}: ${d.uri}\n    size ${d.size}, block sizes min ${d.blockSize.minimum} preferred ${d.blockSize.preferred} ` +
      `max ${d.blockSize.maximum}, ${d.readOnly ? 'read-only' : 'writable'}, multi-conn ${d.canMultiConn ? 'yes' : 'no'}\n` +
      `    contexts: ${d.contexts.join(', ')}\n`);
  }
  if (attachments.length > 0) ctx.stdout(`attached read-only (vircpt hotadd):\n${attachments.map(describeAttachment).join('\n')}\n`);
}
