// vircpt export / release: an export that outlives the command, ended only by `vircpt release`.
import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { VircptError } from '../../errors.js';
import { describeBackup, jobInfo } from '../../libvirt/backup.js';
import { getCheckpoint, type Checkpoint } from '../../libvirt/checkpoint.js';
import { findExports, findLiveExport, stopExport } from '../../exports/discover.js';
import { nbdUri, readRecord, writeRecord, type ExportRecord } from '../../exports/export.js';
import { assertNoJob } from '../../exports/backup-export.js';
import { remoteOwner } from '../../exports/remote-export.js';
import { hostId, Instance, instanceAlive, ownerOfPath, PERSISTENT_INSTANCE } from '../../exports/runtime.js';
import { DEFAULT_SCRATCH_RESERVE, guardOff } from '../../exports/scratch-guard.js';
import { endWatcher, startWatcher } from '../../exports/scratch-watcher.js';
import { reconcile } from '../../exports/attachments.js';
import { startExport } from '../../exports/start.js';
import { printJson, remoteOptions, selectDisks, type Ctx, type SelectedDomain } from '../context.js';

export async function exportCmd(ctx: Ctx, name: string, json: boolean): Promise<void> {
  const sel = await selectDisks(ctx);
  const checkpoint = await getCheckpoint(ctx.virsh, sel.domain.name, name);
  const live = await findLiveExport(ctx.virsh, ctx.dirs, sel.domain.name);
  if (live) {
    throw new VircptError('JOB_ACTIVE', `domain ${sel.domain.name} is already exported (instance ${live.instance.id}); see vircpt info`);
  }
  const rec = await startGuardedExport(ctx, sel, checkpoint);
  if (json) return printJson(ctx, rec);
  ctx.stdout(describeExport(rec, name, rec.remote ? remoteAccess(rec.remote) : await whoCanConnect(rec.disks[0]!.socket)));
}

/**
 * An export of the persistent instance (it outlives the command; `vircpt release` ends it), with
 * its scratch guard process when it is a backup job. No guard, no export.
 */
export async function startGuardedExport(ctx: Ctx, sel: SelectedDomain, checkpoint: Checkpoint, extra: Partial<ExportRecord> = {}): Promise<ExportRecord> {
  const instance = Instance.of('export', ctx.dirs);
  const reserve = ctx.opts.scratchReserve ?? DEFAULT_SCRATCH_RESERVE;
  let rec = await startExport({
    virsh: ctx.virsh, log: ctx.log, domain: sel.domain, sizes: sel.sizes, checkpoint, targets: sel.targets,
    instance, scratchRoot: ctx.opts.scratchdir, scratchReserve: reserve, remote: remoteOptions(ctx.opts),
  });
  const domainDir = instance.domainDir(rec.domain);
  if (Object.keys(extra).length > 0) await writeRecord(domainDir, (rec = { ...rec, ...extra }));
  const scratch = rec.disks[0]?.scratch;
  if (rec.kind === 'backup' && scratch && !guardOff(reserve) && rec.remote === undefined) {
    // The export outlives this command: its scratch guard is a process of its own. No guard, no export.
    try {
      await startWatcher({ uri: ctx.virsh.uri, domain: rec.domain, domainDir, scratchDir: path.dirname(scratch), startedAt: rec.startedAt, reserve });
    } catch (err) {
      await stopExport(ctx.virsh, { rec, instance }, ctx.log);
      throw err;
    }
    rec = (await readRecord(domainDir)) ?? rec;
  }
  return rec;
}

/**
 * Who can connect to an export's socket, from its folder as it is now: a Unix socket needs
 * search permission on its folder (and write on itself), and root passes every check.
 */
/** A remote export listens on the hypervisor's network: who gets in is the CA's (and the firewall's) say. */
export function remoteAccess(r: NonNullable<ExportRecord['remote']>): string {
  return r.tls
    ? `Who can connect: whoever reaches port ${r.port} on the hypervisor and holds a client certificate of the CA of its backup_tls_x509_cert_dir.`
    : `Who can connect: whoever reaches port ${r.port} on the hypervisor (no TLS: plaintext, no client check).`;
}

export async function whoCanConnect(socket: string): Promise<string> {
  const dir = path.dirname(socket);
  const st = await stat(dir);
  const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
  const owner = await nameOf('passwd', st.uid);
  if ((st.mode & 0o011) === 0) {
    const who = st.uid === 0 ? 'root only' : `root and ${owner} only`;
    return `Who can connect: ${who} (${dir} is mode ${mode}, owner ${owner}).`;
  }
  return `Who can connect: anyone whom ${dir} lets in (mode ${mode}, owner ${owner}, group ${await nameOf('group', st.gid)}).`;
}

async function nameOf(db: 'passwd' | 'group', id: number): Promise<string> {
  const out = await promisify(execFile)('getent', [db, String(id)]).then((r) => r.stdout, () => '');
  return out.split(':')[0] || String(id);
}

/** Human-readable: the socket, each disk's URI and dirty context, who can connect, commands to try. */
export function describeExport(rec: ExportRecord, checkpoint: string, access: string): string {
  const how = rec.kind === 'backup' ? 'backup job' : 'shut off: qemu-nbd, all checkpoint bitmaps';
  const lines = [`exported ${rec.domain} at checkpoint ${checkpoint} (${how}); point in time ${rec.startedAt}`];
  for (const d of rec.disks) {
    lines.push(`  ${d.target}: ${nbdUri(d, rec.remote)}  size ${d.size}  dirty context ${d.dirtyContexts[checkpoint] ?? '-'}`);
  }
  const d = rec.disks[0]!;
  if (rec.remote !== undefined) return describeRemote(rec, checkpoint, [...lines, access]);
  const uri = nbdUri(d);
  lines.push(
    access,
    '',
    'Try:',
    `  nbdinfo --list 'nbd+unix:///?socket=${d.socket}'`,
    `  nbdinfo --map=${d.dirtyContexts[checkpoint] ?? 'base:allocation'} '${uri}'`,
    `  nbdcopy '${uri}' ${d.target}.raw`,
    `  qemu-img create -f qcow2 -b '${uri}' -F raw ${d.target}-overlay.qcow2   # only while this export runs`,
    `  mkdir -p /tmp/${d.target} && nbdfuse -r /tmp/${d.target}/disk.raw '${uri}' &   # then losetup -r -f --show /tmp/${d.target}/disk.raw`,
    ...(rec.guard ? [`A scratch guard (pid ${rec.guard.pid}) ends the backup job if free space under ${path.dirname(d.scratch ?? '')} falls below the reserve.`] : []),
    `Release it with: vircpt -d ${rec.domain} release`,
    '',
  );
  return lines.join('\n');
}

/** A remote export: nbds:// URIs with libnbd's tls-certificates=, QEMU's tls-creds-x509 object. */
function describeRemote(rec: ExportRecord, checkpoint: string, lines: string[]): string {
  const r = rec.remote!;
  const d = rec.disks[0]!;
  const uri = nbdUri(d, r);
  const list = nbdUri({ socket: '', exportName: '' }, r);
  const obj = r.tls ? `--object tls-creds-x509,id=tls0,endpoint=client,dir=${r.certs} ` : '';
  const opts = `driver=nbd,server.type=inet,server.host=${r.host},server.port=${r.port},export=${d.exportName}${r.tls ? ',tls-creds=tls0' : ''}`;
  lines.push(
    '',
    `The NBD server runs on the hypervisor, port ${r.port}${r.tls ? `, TLS with the certificates of ${r.certs}` : ', without TLS'}. Try:`,
    `  nbdinfo --list '${list}'`,
    `  nbdinfo --map=${d.dirtyContexts[checkpoint] ?? 'base:allocation'} '${uri}'`,
    `  nbdcopy '${uri}' ${d.target}.raw`,
    `  qemu-img convert ${obj}--image-opts '${opts}' -O raw ${d.target}.raw`,
    `Release it with: vircpt -U '${r.uri}' -d ${rec.domain} release`,
    '',
  );
  return lines.join('\n');
}

/** BUSY, naming the scanners, while disks of the export are hot-plugged into any (vircpt hotadd). */
async function refuseWhileAttached(ctx: Ctx, rec: ExportRecord, domainDir: string): Promise<void> {
  const left = (await reconcile(ctx.virsh, domainDir, rec, ctx.log)).attachments ?? [];
  if (left.length === 0) return;
  const where = left.map((a) => `${a.scanner} (${a.target} as ${a.scannerTarget})`).join(', ');
  throw new VircptError('BUSY', `domain ${rec.domain}: disks of its export are attached to ${where}; detach them first: vircpt -d ${rec.domain} hotremove`);
}

export async function releaseCmd(ctx: Ctx): Promise<void> {
  const domain = ctx.domainName;
  const found = await findExports(ctx.dirs, domain);
  const ours = found.find((f) => f.instance.id === PERSISTENT_INSTANCE);
  if (ours) {
    await refuseWhileAttached(ctx, ours.rec, ours.instance.domainDir(domain));
    // Its scratch guard first, so that it cannot act on a job being released.
    await endWatcher(ours.rec);
    const rec = (await readRecord(ours.instance.domainDir(domain))) ?? ours.rec;
    await stopExport(ctx.virsh, { rec, instance: ours.instance }, ctx.log);
    ctx.stdout(`released the export of ${domain}\n`);
    if (rec.gaveUp) ctx.stdout(`(its scratch guard had already ended the backup job at ${rec.gaveUp})\n`);
    return;
  }
  // An export of ours whose owner is gone (a mount killed, or one that exited while libvirt was
  // down and whose helper gave up): nobody else will end it.
  const dead = found.filter((f) => !f.ownerAlive);
  for (const f of dead) {
    await stopExport(ctx.virsh, f, ctx.log);
    ctx.stdout(`released the export of ${domain} left by instance ${f.instance.id}, which is no longer running\n`);
  }
  if (dead.length > 0) return;
  // Nothing of vircpt export's: say precisely what is there, and touch none of it.
  const info = await jobInfo(ctx.virsh, domain).catch(() => undefined);
  if (info && info.type !== 'None') {
    const job = info.operation === 'Backup' ? await describeBackup(ctx.virsh, domain) : undefined;
    const other = remoteOwner(job);
    if (other !== undefined && other.host !== hostId()) {
      throw new VircptError('JOB_ACTIVE', `domain ${domain} is exported by vircptfs on another backup server (host ${other.host}); refusing to touch it`);
    }
    const owner = ownerOfPath(ctx.dirs, job?.socket) ?? other?.instance;
    if (owner && !instanceAlive(owner)) {
      await assertNoJob(ctx.virsh, Instance.of('cli', ctx.dirs), domain, ctx.log, Promise.resolve(info)); // ends it
      ctx.stdout(`released the backup job of ${domain} left by instance ${owner}, which is no longer running\n`);
      return;
    }
    if (owner) throw new VircptError('JOB_ACTIVE', `domain ${domain} is exported by a vircptfs mount (instance ${owner}), not by vircpt export; unmount it instead`);
    throw new VircptError('FOREIGN_JOB', `domain ${domain} has a ${info.operation || 'libvirt'} job that vircpt did not start; refusing to abort it`);
  }
  throw new VircptError('NO_EXPORT', `domain ${domain} has no export started by vircpt export`);
}
