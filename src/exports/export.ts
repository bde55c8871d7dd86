// What an export is, once started: per disk, where its NBD server listens and which meta
// contexts carry the dirty bitmaps. Written to <domainDir>/export.json so that other commands
// (`vircpt info`, `map`, `copy`, `release`) and a later instance can find it.
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { formatNbdUri } from '../nbd/uri.js';

export type ExportKind = 'backup' | 'qemu-nbd';

export interface DiskExport {
  target: string;
  /** Capacity in bytes (domblkinfo). */
  size: number;
  socket: string;
  exportName: string;
  /** Checkpoint name -> the meta context holding its dirty bitmap in this export. */
  dirtyContexts: Record<string, string>;
  /** qemu-nbd only: the pid file of the process serving this disk. */
  pidFile?: string;
  /** backup only: the scratch image (libvirt deletes it when the job ends). */
  scratch?: string;
}

export interface ExportRecord {
  domain: string;
  kind: ExportKind;
  /** The instance that started it (see runtime.ts). */
  owner: string;
  /** For a backup job: its incremental checkpoint. */
  checkpoint: string | undefined;
  /** ISO time of the export's start: its point in time. */
  startedAt: string;
  /** Where the scratch images live (backup), so release can remove the folder. */
  scratchRoot: string | undefined;
  disks: DiskExport[];
  /** `vircpt export` only: its scratch guard's process (scratch-watcher.ts), ended by release. */
  guard?: { pid: number; startTime: string };
  /** Set by that guard when it gave the export up (ended its job): when and why. */
  gaveUp?: string;
  /** A remote hypervisor's export: NBD over TCP (disks' `socket` is empty). */
  remote?: RemoteEndpoint;
  /** Started by `vircpt hotadd`: `hotremove` releases it along with its last attachment. */
  startedBy?: 'hotadd';
  /** Its disks hot-plugged into other domains (attachments.ts). */
  attachments?: Attachment[];
}

/** One disk of the export plugged read-only into another running domain (a scanner). */
export interface Attachment {
  scanner: string;
  /** The export's disk. */
  target: string;
  /** The disk's name, bus and address inside the scanner. */
  scannerTarget: string;
  bus: 'scsi' | 'virtio';
  address: string | undefined;
  serial: string;
  /** Its user alias in the scanner: detach finds exactly this device by it. */
  alias: string;
  /** `attaching` is written before the attach call: a crash there still leaves its trace. */
  state: 'attaching' | 'attached';
  since: string;
}

/** Where a remote export's NBD server listens, and how to reach it. */
export interface RemoteEndpoint {
  /** The libvirt URI the job was started through. */
  uri: string;
  /** The address dialled and checked in the server's certificate (nbd_host=). */
  host: string;
  port: number;
  /** The job was started with tls='yes'. */
  tls: boolean;
  /** The client certificate folder (libnbd's names). */
  certs: string;
  /** The backup server that started it (runtime.ts hostId). */
  hostId: string;
}

/** Whether a running backup job (backup-dumpxml) is the one a record describes: the same socket,
 *  or for a remote export the same port and the same scratch file (named for host and instance). */
export function jobMatches(job: { socket: string | undefined; port: number | undefined; disks: { scratch: string | undefined }[] } | undefined,
  rec: ExportRecord): boolean {
  if (job === undefined) return false;
  if (rec.remote === undefined) return job.socket === rec.disks[0]?.socket;
  return job.port === rec.remote.port && job.disks.some((d) => d.scratch !== undefined && d.scratch === rec.disks[0]?.scratch);
}

export const RECORD_FILE = 'export.json';

/** Written whole or not at all (a new file renamed over the old): other processes read it any time. */
export async function writeRecord(domainDir: string, rec: ExportRecord): Promise<void> {
  const file = path.join(domainDir, RECORD_FILE);
  const fresh = `${file}.${process.pid}.new`;
  await writeFile(fresh, `${JSON.stringify(rec, null, 2)}\n`, { mode: 0o600 });
  await rename(fresh, file);
}

export async function readRecord(domainDir: string): Promise<ExportRecord | undefined> {
  try {
    return JSON.parse(await readFile(path.join(domainDir, RECORD_FILE), 'utf8')) as ExportRecord;
  } catch {
    return undefined;
  }
}

/** The NBD URI of one disk of an export, as libnbd tools take it. */
export function nbdUri(d: Pick<DiskExport, 'socket' | 'exportName'>, remote?: RemoteEndpoint): string {
  if (remote !== undefined) {
    const host = remote.host.includes(':') ? `[${remote.host}]` : remote.host;
    const query = remote.tls ? `?tls-certificates=${remote.certs}` : '';
    return `${remote.tls ? 'nbds' : 'nbd'}://${host}:${remote.port}/${encodeURIComponent(d.exportName)}${query}`;
  }
  return formatNbdUri({ exportName: d.exportName, socketPath: d.socket });
}
