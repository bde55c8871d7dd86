// Pull-mode backup jobs: QEMU's NBD server exporting each disk at the job's start, with a
// dirty bitmap of what changed since the incremental checkpoint.
import { VircptError } from '../errors.js';
import type { CallOptions, Virsh } from './virsh.js';
import { attr, buildXml, child, children, parseXml, text } from './xml.js';

export interface JobInfo {
  /** None, Unbounded, Bounded, ... */
  type: string;
  /** Backup, Migration, ... (empty when there is no job). */
  operation: string;
}

export interface BackupDisk {
  target: string;
  exportName: string;
  /** The dirty-bitmap name in the export (context qemu:dirty-bitmap:<exportBitmap>). */
  exportBitmap: string | undefined;
  scratch: string | undefined;
}

export interface BackupJob {
  incremental: string | undefined;
  transport: string;
  socket: string | undefined;
  host: string | undefined;
  port: number | undefined;
  disks: BackupDisk[];
}

export interface BackupRequest {
  incremental?: string;
  /** A Unix socket on this host, or `tcp` for a remote hypervisor's NBD server. */
  socket?: string;
  /** TCP: the address QEMU binds on the hypervisor, the port, and whether TLS is demanded. */
  tcp?: { name: string; port: number; tls: boolean };
  disks: { target: string; scratch: string }[];
  /** Disks of the domain not to export. */
  skip: string[];
}

export async function jobInfo(virsh: Virsh, domain: string, opts?: CallOptions): Promise<JobInfo> {
  const out = await virsh.run(['domjobinfo', '--', domain], opts);
  const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(out)?.[1]?.trim() ?? '';
  return { type: field('Job type') || 'None', operation: field('Operation') };
}

/** The dirty bitmap a pull-mode export of `target` carries (the name libvirt would pick too). */
export function exportBitmapName(target: string): string {
  return `backup-${target}`;
}

/**
 * Export and bitmap names are set, not left to libvirt, so the job's NBD details are known
 * without asking for them (backup-dumpxml) after backup-begin.
 */
export function backupXml(req: BackupRequest): string {
  const disks = [
    ...req.disks.map((d) => ({
      '@name': d.target,
      '@backup': 'yes',
      '@type': 'file',
      '@exportname': d.target,
      ...(req.incremental ? { '@exportbitmap': exportBitmapName(d.target) } : {}),
      scratch: { '@file': d.scratch },
    })),
    ...req.skip.map((t) => ({ '@name': t, '@backup': 'no' })),
  ];
  return buildXml({
    domainbackup: {
      '@mode': 'pull',
      ...(req.incremental ? { incremental: req.incremental } : {}),
      server: req.tcp !== undefined
        ? { '@transport': 'tcp', '@name': req.tcp.name, '@port': String(req.tcp.port), '@tls': req.tcp.tls ? 'yes' : 'no' }
        : { '@transport': 'unix', '@socket': req.socket },
      disks: { disk: disks },
    },
  });
}

/** Starts the job, through a virsh shell when there is one (virsh.ts CallOptions.checkable): on
 *  any failure (libvirt's refusal, a timeout, a lost connection) the caller asks describeBackup
 *  whether a job with its socket runs anyway. */
export async function beginBackup(virsh: Virsh, domain: string, xml: string): Promise<void> {
  await virsh.runWithXml(['backup-begin', '--', domain, '{xml}'], xml, { checkable: true });
}

/** As beginBackup, with the XML already in a file: virsh starts at once (no temporary folder). */
export async function beginBackupFrom(virsh: Virsh, domain: string, file: string): Promise<void> {
  await virsh.run(['backup-begin', '--', domain, file], { checkable: true });
}

/** The running backup job of a domain, or undefined when there is none. */
export async function describeBackup(virsh: Virsh, domain: string, opts?: CallOptions): Promise<BackupJob | undefined> {
  try {
    return parseBackupXml(await virsh.run(['backup-dumpxml', '--', domain], opts));
  } catch (err) {
    if (err instanceof VircptError && err.code === 'NO_EXPORT') return undefined;
    throw err;
  }
}

export function parseBackupXml(xml: string): BackupJob {
  const b = child(parseXml(xml), 'domainbackup');
  if (!b) throw new VircptError('LIBVIRT', 'libvirt returned a backup description without <domainbackup>');
  const server = child(b, 'server');
  const port = attr(server, 'port');
  return {
    incremental: text(b, 'incremental'),
    transport: attr(server, 'transport') ?? 'tcp',
    socket: attr(server, 'socket'),
    host: attr(server, 'name'),
    port: port === undefined ? undefined : Number(port),
    disks: children(child(b, 'disks'), 'disk')
      .filter((d) => attr(d, 'backup') !== 'no')
      .map((d) => ({
        target: attr(d, 'name') ?? '',
        exportName: attr(d, 'exportname') ?? attr(d, 'name') ?? '',
        exportBitmap: attr(d, 'exportbitmap'),
        scratch: attr(child(d, 'scratch'), 'file'),
      })),
  };
}

/** Ends the domain's job. Callers check first that the job is theirs, and after a failure
 *  whether it is still there (a timeout says nothing either way): with `checkable` it may go
 *  through a virsh shell (virsh.ts), otherwise it is a virsh process of its own. */
export async function abortJob(virsh: Virsh, domain: string, opts?: CallOptions): Promise<void> {
  await virsh.run(['domjobabort', '--', domain], opts);
}
