// A running domain's export on a remote hypervisor: the pull-mode backup job's NBD server listens
// on TCP there (TLS unless nbd_tls=off), on a port from nbd_ports=; its scratch files go to a
// folder of the hypervisor (libvirt creates and deletes them) and are named for this backup
// server and instance, which is how a job is recognised as ours: there is no socket of ours.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { VircptError, messageOf } from '../errors.js';
import { withFrozenGuest } from '../libvirt/agent.js';
import { backupXml, beginBackup, describeBackup, exportBitmapName, jobInfo, type BackupJob, type JobInfo } from '../libvirt/backup.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import { abortJobAndWait, currentJob, type BackupExportOptions } from './backup-export.js';
import { jobMatches, writeRecord, type ExportRecord, type RemoteEndpoint } from './export.js';
import { candidatePorts, DEFAULT_REMOTE_SCRATCH, freePort, takePort, type RemoteTarget } from './remote.js';
import { domainDirName, hostId, Instance, instanceAlive } from './runtime.js';

export interface RemoteExportOptions extends BackupExportOptions { remote: RemoteTarget }

/** `vircptfs-<host>-<instance>-<domain>-<target>.scratch.qcow2`: the owner, readable from the job. */
export function remoteScratchPath(dir: string, host: string, instance: string, domain: string, target: string): string {
  return path.join(dir, `vircptfs-${host}-${instance}-${domainDirName(domain)}-${target}.scratch.qcow2`);
}

/** The backup server and instance a job's scratch file names, when it is one of ours. */
export function remoteOwner(job: BackupJob | undefined): { host: string; instance: string } | undefined {
  for (const d of job?.disks ?? []) {
    const m = /^vircptfs-([a-z0-9]+)-((?:fs|cli)-\d+-\d+|export)-/.exec(path.basename(d.scratch ?? ''));
    if (m) return { host: m[1]!, instance: m[2]! };
  }
  return undefined;
}

/** As assertNoJob, for a remote job: only a job of this backup server's dead instance is ended. */
async function assertNoRemoteJob(virsh: Virsh, instance: Instance, domain: string, log: Logger, asked?: Promise<JobInfo>): Promise<void> {
  const info = await (asked ?? jobInfo(virsh, domain));
  if (info.type === 'None') return;
  const job = info.operation === 'Backup' ? await describeBackup(virsh, domain) : undefined;
  const owner = remoteOwner(job);
  if (owner === undefined) {
    throw new VircptError('FOREIGN_JOB', `domain ${domain} has a running ${info.operation || 'libvirt'} job that vircptfs did not start; it is left alone`);
  }
  if (owner.host !== hostId()) {
    throw new VircptError('JOB_ACTIVE', `domain ${domain} is exported by vircptfs on another backup server (host ${owner.host}, instance ${owner.instance}); it is left alone`);
  }
  const orphan = owner.instance === instance.id && !instance.persistent;
  if (!orphan && instanceAlive(owner.instance)) {
    throw new VircptError('JOB_ACTIVE', `domain ${domain} is already exported by vircptfs (instance ${owner.instance})`);
  }
  log.warn({ domain }, `domain ${domain}: aborting the remote backup job left by instance ${owner.instance} of this host`);
  const scratch = job?.disks[0]?.scratch;
  await abortJobAndWait(virsh, domain, (j) => j.disks[0]?.scratch === scratch);
  await new Instance(owner.instance, instance.dirs).cleanup(domain);
}

/** What a failed backup-begin means here: QEMU could not bind the port (another server, another
 *  export: the next port is tried), or the host's backup_tls_x509_cert_dir lacks its certificates. */
export function beginFailure(said: string): 'busy' | 'no-credentials' | 'other' {
  if (/Address already in use|Failed to find an available port/i.test(said)) return 'busy';
  if (/Unable to access credentials/i.test(said)) return 'no-credentials';
  return 'other';
}

export async function startRemoteBackupExport(o: RemoteExportOptions): Promise<ExportRecord> {
  const { virsh, instance, domain, remote } = o;
  await assertNoRemoteJob(virsh, instance, domain.name, o.log, o.job);
  const host = hostId();
  const domainDir = instance.domainDir(domain.name);
  await mkdir(path.dirname(domainDir), { recursive: true, mode: 0o711 });
  await mkdir(domainDir, { recursive: true, mode: 0o700 });
  const scratchDir = o.scratchRoot ?? DEFAULT_REMOTE_SCRATCH;
  const disks = o.targets.map((t) => ({ target: t, scratch: remoteScratchPath(scratchDir, host, instance.id, domain.name, t) }));
  const chosen = new Set(o.targets);
  const skip = domain.disks.map((d) => d.target).filter((t) => !chosen.has(t));
  let tls = remote.tls !== 'off';
  const ports = candidatePorts(remote.ports);
  for (let i = 0; i < ports.length; i++) {
    const port = ports[i]!;
    takePort(port);
    const endpoint: RemoteEndpoint = { uri: remote.uri, host: remote.host, port, tls, certs: remote.certs, hostId: host };
    const rec = recordOf(o, disks, endpoint);
    await writeRecord(domainDir, rec); // before the job: a crash right after backup-begin still finds it
    const xml = backupXml({ incremental: o.checkpoint, tcp: { name: remote.bind, port, tls }, disks, skip });
    try {
      const begin = () => beginBackup(virsh, domain.name, xml);
      await (o.freeze === false ? begin() : withFrozenGuest(virsh, domain, o.log, begin));
      o.log.info({ domain: domain.name, checkpoint: o.checkpoint, port, tls }, `export started: ${domain.name} (checkpoint ${o.checkpoint}) on ${remote.bind}:${port}${tls ? ' with TLS' : ''}`);
      return rec;
    } catch (err) {
      freePort(port);
      const said = messageOf(err);
      const started = await currentJob(virsh, domain.name).then((j) => jobMatches(j, rec), () => undefined);
      if (started === true) return rec; // libvirt started it although the call failed: it is ours
      if (started === undefined) throw err; // unknown: the record stays for whoever comes next
      const why = beginFailure(said);
      if (why === 'busy') {
        o.log.info({ domain: domain.name, port }, `domain ${domain.name}: port ${port} is busy on the hypervisor, trying the next`);
        continue;
      }
      if (why === 'no-credentials' && tls && remote.tls === 'prefer') {
        o.log.warn({ domain: domain.name }, `domain ${domain.name}: the hypervisor has no NBD TLS certificates; nbd_tls=prefer: serving without TLS`);
        tls = false;
        i--;
        continue;
      }
      await instance.cleanup(domain.name);
      if (why === 'no-credentials') throw noBackupTls(domain.name, remote, said);
      if (err instanceof VircptError) throw new VircptError(err.code, `domain ${domain.name}, checkpoint ${o.checkpoint}: ${said}`, { cause: err });
      throw err;
    }
  }
  await instance.cleanup(domain.name);
  throw new VircptError('LIBVIRT', `domain ${domain.name}: no free port in nbd_ports=${remote.ports.from}-${remote.ports.to} on the hypervisor`);
}

function noBackupTls(domain: string, remote: RemoteTarget, said: string): VircptError {
  const words = /credentials\s+(\S+)/i.exec(said)?.[1] ?? 'its backup certificates';
  return new VircptError('NBD_TLS', `NBD TLS: domain ${domain}: the hypervisor's QEMU cannot serve NBD over TLS (${words} is missing there): ` +
    'set backup_tls_x509_cert_dir in its /etc/libvirt/qemu.conf to a folder with ca-cert.pem, server-cert.pem and server-key.pem ' +
    `and restart libvirtd, or mount with nbd_tls=${remote.tls === 'require' ? 'prefer' : 'off'} (no encryption)`);
}

function recordOf(o: RemoteExportOptions, disks: { target: string; scratch: string }[], remote: RemoteEndpoint): ExportRecord {
  return {
    domain: o.domain.name,
    kind: 'backup',
    owner: o.instance.id,
    checkpoint: o.checkpoint,
    startedAt: new Date().toISOString(),
    scratchRoot: undefined, // on the hypervisor: libvirt deletes the files when the job ends
    remote,
    disks: disks.map((d) => ({
      target: d.target,
      size: o.sizes.get(d.target)?.capacity ?? 0,
      socket: '',
      exportName: d.target,
      dirtyContexts: { [o.checkpoint]: `qemu:dirty-bitmap:${exportBitmapName(d.target)}` },
      scratch: d.scratch,
    })),
  };
}
