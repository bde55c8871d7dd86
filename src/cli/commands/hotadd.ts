// vircpt hotadd / hotremove: a checkpoint's disks plugged read-only into another running domain
// (a scanner or backup appliance), read from an export of `vircpt export`'s kind (never a mount's:
// a mount releases its export on its own file counts, under the scanner's feet). docs/hotadd.md.
import { chown, stat } from 'node:fs/promises';
import path from 'node:path';
import { VircptError } from '../../errors.js';
import { attachAll, detachAll, reconcile } from '../../exports/attachments.js';
import { findExports, stopExport, exportServing, type FoundExport } from '../../exports/discover.js';
import { readRecord, type Attachment, type ExportRecord } from '../../exports/export.js';
import { Instance, PERSISTENT_INSTANCE } from '../../exports/runtime.js';
import { endWatcher } from '../../exports/scratch-watcher.js';
import { getCheckpoint } from '../../libvirt/checkpoint.js';
import { hotplugView, type HotplugBus, type HotplugView } from '../../libvirt/hotplug.js';
import { isRemoteUri } from '../../libvirt/uri.js';
import { printJson, selectDisks, type Ctx } from '../context.js';
import { startGuardedExport } from './export.js';

export interface HotaddOptions {
  name: string;
  to: string;
  bus: HotplugBus;
  json: boolean;
}

/** The running scanner, able to take disks on the bus; one clear line otherwise. */
async function scannerView(ctx: Ctx, scanner: string, bus: HotplugBus): Promise<HotplugView> {
  if (scanner === ctx.domainName) throw new VircptError('USAGE', `--to ${scanner}: a domain's disks cannot be attached to itself`);
  if (isRemoteUri(ctx.virsh.uri)) {
    // The scanner would have to dial the export's TCP port with the backup server's TLS client
    // certificate: not done yet. Nothing is started.
    throw new VircptError('UNSUPPORTED', `hotadd over a remote connection (${ctx.virsh.uri}) is not supported yet: run it on the hypervisor (qemu:///system)`);
  }
  const view = await hotplugView(ctx.virsh, scanner).catch((err: unknown) => {
    if (err instanceof VircptError && err.code === 'DOMAIN_NOT_FOUND') {
      throw new VircptError('DOMAIN_NOT_FOUND', `scanner domain ${scanner} not found (connection ${ctx.opts.uri})`, { cause: err });
    }
    throw err;
  });
  if (!view.details.active) {
    throw new VircptError('DOMAIN_NOT_RUNNING', `scanner domain ${scanner} is ${view.details.state}: disks are hot-plugged into a running domain only`);
  }
  if (bus === 'scsi' && view.virtioScsi.length === 0) {
    throw new VircptError('UNSUPPORTED', `scanner domain ${scanner} has no virtio-scsi controller: add one ` +
      "(<controller type='scsi' model='virtio-scsi'/>, needs a restart of the scanner) or use --bus virtio");
  }
  return view;
}

/** Our export of the domain that hotadd may use: `vircpt export`'s, serving, at this checkpoint. */
async function usableExport(ctx: Ctx, checkpoint: string): Promise<FoundExport | undefined> {
  const found = await findExports(ctx.dirs, ctx.domainName);
  const other = found.find((f) => f.instance.id !== PERSISTENT_INSTANCE && f.ownerAlive);
  if (other && (await exportServing(ctx.virsh, other.rec))) {
    throw new VircptError('JOB_ACTIVE', `domain ${ctx.domainName} is exported by a vircptfs mount or command (instance ${other.instance.id}); ` +
      'hotadd needs an export of its own: close its files (or unmount) and retry, or attach the mount\'s <disk>.raw (docs/hotadd.md)');
  }
  const ours = found.find((f) => f.instance.id === PERSISTENT_INSTANCE);
  if (!ours) return undefined;
  const domainDir = ours.instance.domainDir(ctx.domainName);
  const rec = await reconcile(ctx.virsh, domainDir, ours.rec, ctx.log);
  if (!(await exportServing(ctx.virsh, rec))) {
    const left = rec.attachments ?? [];
    if (left.length > 0) {
      throw new VircptError('BUSY', `domain ${ctx.domainName}: its earlier export is gone but ${left.map((a) => a.scanner).join(', ')} still holds its disks; ` +
        `vircpt -d ${ctx.domainName} hotremove first`);
    }
    return undefined; // a stale record: starting a new export replaces it
  }
  const known = rec.checkpoint === checkpoint || rec.disks.some((d) => Object.hasOwn(d.dirtyContexts, checkpoint));
  if (!known) {
    throw new VircptError('JOB_ACTIVE', `domain ${ctx.domainName} is already exported at checkpoint ${rec.checkpoint ?? '(shut off)'} by vircpt export; ` +
      `release it first or hotadd --name ${rec.checkpoint ?? ''}`.trimEnd());
  }
  return { ...ours, rec };
}

export async function hotaddCmd(ctx: Ctx, o: HotaddOptions): Promise<void> {
  const view = await scannerView(ctx, o.to, o.bus);
  const reused = await usableExport(ctx, o.name);
  const instance = Instance.of('export', ctx.dirs);
  let rec: ExportRecord;
  if (reused) {
    rec = reused.rec;
  } else {
    const sel = await selectDisks(ctx);
    rec = await startGuardedExport(ctx, sel, await getCheckpoint(ctx.virsh, sel.domain.name, o.name), { startedBy: 'hotadd' });
  }
  const domainDir = instance.domainDir(rec.domain);
  const { include, exclude } = ctx.opts;
  const disks = rec.disks.filter((d) => (!include?.length || include.includes(d.target)) && !exclude?.includes(d.target));
  try {
    if (disks.length === 0) throw new VircptError('DISK_NOT_FOUND', `domain ${rec.domain}: its export serves none of the selected disks (it serves ${rec.disks.map((d) => d.target).join(', ')})`);
    await grantScanner(rec, domainDir, view);
    const added = await attachAll({ virsh: ctx.virsh, log: ctx.log, domainDir, rec, scanner: o.to, view, disks, bus: o.bus });
    if (o.json) return printJson(ctx, { domain: rec.domain, checkpoint: o.name, scanner: o.to, startedAt: rec.startedAt, attachments: added });
    ctx.stdout(`attached ${rec.domain} at checkpoint ${o.name} (point in time ${rec.startedAt}) to ${o.to}, read-only:\n`);
    for (const a of added) ctx.stdout(`${describeAttachment(a)}\n`);
    ctx.stdout(`Detach with: vircpt -d ${rec.domain} hotremove --to ${o.to}\n`);
  } catch (err) {
    // Nothing started for a hotadd that attached nothing.
    const now = (await readRecord(domainDir)) ?? rec;
    if (!reused && (now.attachments ?? []).length === 0) await release(ctx, { rec: now, instance });
    throw err;
  }
}

export function describeAttachment(a: Attachment): string {
  const byId = a.bus === 'scsi' ? `/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${a.serial}` : `/dev/disk/by-id/virtio-${a.serial}`;
  return `  ${a.target} -> ${a.scanner} ${a.scannerTarget} (${a.bus}, ${a.address ?? 'address pending'}) serial ${a.serial}  ${byId}`;
}

/**
 * A shut-off domain's qemu-nbd sockets are root's: the scanner's QEMU gets them (a backup job's
 * are QEMU's own, made by the protected domain's QEMU, the same user unless labels differ).
 */
async function grantScanner(rec: ExportRecord, domainDir: string, view: HotplugView): Promise<void> {
  const user = view.details.qemuUser;
  if (!user || process.getuid?.() !== 0) return;
  if (rec.kind === 'backup') {
    const owner = (await stat(domainDir)).uid;
    if (owner !== user.uid) {
      throw new VircptError('UNSUPPORTED', `scanner domain ${view.details.name} runs QEMU as uid ${user.uid}, but the export's socket folder ${domainDir} ` +
        `is uid ${owner}'s (the QEMU of ${rec.domain}): the scanner could not connect`);
    }
    return;
  }
  await chown(domainDir, user.uid, user.gid);
  for (const d of rec.disks) if (path.dirname(d.socket) === domainDir) await chown(d.socket, user.uid, user.gid);
}

async function release(ctx: Ctx, f: Pick<FoundExport, 'rec' | 'instance'>): Promise<void> {
  await endWatcher(f.rec);
  const rec = (await readRecord(f.instance.domainDir(f.rec.domain))) ?? f.rec;
  await stopExport(ctx.virsh, { rec, instance: f.instance }, ctx.log);
}

export interface HotremoveOptions {
  to?: string;
  force: boolean;
  waitS: number;
}

export async function hotremoveCmd(ctx: Ctx, o: HotremoveOptions): Promise<void> {
  const ours = (await findExports(ctx.dirs, ctx.domainName)).find((f) => f.instance.id === PERSISTENT_INSTANCE);
  if (!ours) throw new VircptError('NO_EXPORT', `domain ${ctx.domainName} has no export of vircpt hotadd or vircpt export`);
  const domainDir = ours.instance.domainDir(ctx.domainName);
  const rec = await reconcile(ctx.virsh, domainDir, ours.rec, ctx.log);
  const chosen = (a: Attachment) => !o.to || a.scanner === o.to;
  const out = await detachAll(ctx.virsh, ctx.log, domainDir, rec, chosen, o.waitS * 1000);
  for (const a of out.detached) ctx.stdout(`detached ${rec.domain}/${a.target} from ${a.scanner} (${a.scannerTarget})\n`);
  const now = (await readRecord(domainDir)) ?? rec;
  if (out.stuck.length > 0 && !o.force) {
    const s = out.stuck.map(({ a, why }) => `${a.scanner} ${a.scannerTarget} (${a.target}${why ? `: ${why}` : ''})`).join(', ');
    throw new VircptError('BUSY', `domain ${rec.domain}: the guest of ${s} did not let go within ${o.waitS} s; ` +
      'the export and its record stay; retry hotremove, or hotremove --force to release the export anyway');
  }
  const others = (now.attachments ?? []).filter((a) => !chosen(a));
  if (others.length > 0 || (now.startedBy !== 'hotadd' && out.stuck.length === 0)) {
    ctx.stdout(others.length > 0
      ? `the export of ${rec.domain} stays: still attached to ${[...new Set(others.map((a) => a.scanner))].join(', ')}\n`
      : `the export of ${rec.domain} stays (vircpt export started it; vircpt release ends it)\n`);
    return;
  }
  for (const { a } of out.stuck) {
    ctx.stderr(`vircpt: warning: ${a.scanner} still lists ${a.scannerTarget}: released anyway (--force); its reads fail until its guest lets go\n`);
  }
  await release(ctx, { rec: { ...now, attachments: [] }, instance: ours.instance });
  ctx.stdout(`released the export of ${rec.domain}\n`);
}
