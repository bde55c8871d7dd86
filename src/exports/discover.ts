// Finding exports of ours (for info/map/copy/release and for the filesystem), and cleaning up
// after crashed instances: only directories whose owning instance is dead, and only jobs whose
// socket is one of ours. Anyone else's job is never touched.
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { messageOf } from '../errors.js';
import { describeBackup } from '../libvirt/backup.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import { stopBackupExport } from './backup-export.js';
import { jobMatches, readRecord, type ExportRecord } from './export.js';
import { livePid, stopQemuNbdExport } from './qemu-nbd-export.js';
import { domainDirName, hostId, Instance, instanceAlive, type RuntimeDirs } from './runtime.js';

export interface FoundExport {
  rec: ExportRecord;
  instance: Instance;
  /** Its owner process still runs (always true for `vircpt export`'s exports). */
  ownerAlive: boolean;
}

async function subdirs(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return [];
  }
}

/** Every export record under runDir (of one domain, when given). */
export async function findExports(dirs: RuntimeDirs, domain?: string): Promise<FoundExport[]> {
  const found: FoundExport[] = [];
  for (const id of await subdirs(dirs.runDir)) {
    const instance = new Instance(id, dirs);
    const names = domain === undefined ? await subdirs(path.join(dirs.runDir, id)) : [domainDirName(domain)];
    for (const name of names) {
      const rec = await readRecord(path.join(dirs.runDir, id, name));
      // A record of another backup server (its host id) is never ours, even on a shared disk.
      if (rec?.remote !== undefined && rec.remote.hostId !== hostId()) continue;
      if (rec && (domain === undefined || rec.domain === domain)) {
        found.push({ rec, instance, ownerAlive: instanceAlive(id) });
      }
    }
  }
  return found;
}

/** Whether the servers behind a record still serve (the job runs, or every qemu-nbd lives). */
export async function exportServing(virsh: Virsh, rec: ExportRecord): Promise<boolean> {
  if (rec.kind === 'backup') {
    const job = await describeBackup(virsh, rec.domain).catch(() => undefined);
    return jobMatches(job, rec);
  }
  const pids = await Promise.all(rec.disks.map((d) => (d.pidFile ? livePid(d.pidFile) : undefined)));
  return pids.every((p) => p !== undefined);
}

/** The live export of ours for a domain, whoever of ours started it. */
export async function findLiveExport(virsh: Virsh, dirs: RuntimeDirs, domain: string): Promise<FoundExport | undefined> {
  for (const f of await findExports(dirs, domain)) {
    if (f.ownerAlive && (await exportServing(virsh, f.rec))) return f;
  }
  return undefined;
}

/** Stops an export of ours: the backup job is aborted, or its qemu-nbd processes stopped. */
export async function stopExport(virsh: Virsh, f: Pick<FoundExport, 'rec' | 'instance'>, log: Logger): Promise<void> {
  if (f.rec.kind === 'backup') await stopBackupExport(virsh, f.instance, f.rec, log);
  else await stopQemuNbdExport(f.instance, f.rec, log);
}

/** Releases what crashed instances of ours left behind. Returns how many exports it ended. */
export async function cleanupStale(virsh: Virsh, dirs: RuntimeDirs, log: Logger): Promise<number> {
  let n = 0;
  for (const f of await findExports(dirs)) {
    // A remote record names its hypervisor: only a connection to that one may end its job.
    if (f.ownerAlive || (f.rec.remote !== undefined && f.rec.remote.uri !== virsh.uri)) continue;
    try {
      await stopExport(virsh, f, log);
      n++;
      log.info({ domain: f.rec.domain, instance: f.instance.id }, `cleaned up after crashed instance ${f.instance.id}: ${f.rec.domain}`);
    } catch (err) {
      log.warn({ domain: f.rec.domain }, `cleanup of ${f.rec.domain} (instance ${f.instance.id}) failed: ${messageOf(err)}`);
    }
  }
  return n;
}
