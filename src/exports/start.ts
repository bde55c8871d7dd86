// Starting an export of a domain at a checkpoint, whichever way its state allows.
import { VircptError } from '../errors.js';
import { listCheckpoints, type Checkpoint } from '../libvirt/checkpoint.js';
import type { JobInfo } from '../libvirt/backup.js';
import type { BlockInfo, DomainDetails } from '../libvirt/domain.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import { startBackupExport } from './backup-export.js';
import type { ExportRecord } from './export.js';
import { startQemuNbdExport } from './qemu-nbd-export.js';
import { isRemoteUri } from '../libvirt/uri.js';
import { remoteTarget, type RemoteOptions } from './remote.js';
import { startRemoteBackupExport } from './remote-export.js';
import type { Instance } from './runtime.js';
import type { ScratchReserve } from './scratch-guard.js';

export interface StartExportOptions {
  virsh: Virsh;
  instance: Instance;
  log: Logger;
  domain: DomainDetails;
  sizes: Map<string, BlockInfo>;
  checkpoint: Checkpoint;
  /** Wanted disks; only those carrying the checkpoint's bitmap are exported. */
  targets: string[];
  scratchRoot?: string | undefined;
  /** Free space a backup export keeps on its scratch filesystem (scratch-guard.ts). */
  scratchReserve?: ScratchReserve | undefined;
  freeze?: boolean;
  /** The domain's job state (domjobinfo), when asked for alongside the other look-ups. */
  job?: Promise<JobInfo> | undefined;
  /** For a remote URI: NBD over TCP settings (nbd_bind=, nbd_host=, nbd_ports=, nbd_tls=, nbd_certs=). */
  remote?: RemoteOptions | undefined;
}

/** The wanted disks that carry the checkpoint's bitmap (others are warned about). */
export function disksOfCheckpoint(o: Pick<StartExportOptions, 'checkpoint' | 'targets' | 'log' | 'domain'>): string[] {
  const withBitmap = new Set(o.checkpoint.disks.filter((d) => d.checkpoint === 'bitmap').map((d) => d.target));
  const out = o.targets.filter((t) => withBitmap.has(t));
  for (const t of o.targets) {
    if (!withBitmap.has(t)) o.log.warn(`domain ${o.domain.name}: disk ${t} is not in checkpoint ${o.checkpoint.name}, skipped`);
  }
  if (out.length === 0) {
    throw new VircptError('DISK_NOT_FOUND', `domain ${o.domain.name}: checkpoint ${o.checkpoint.name} covers none of the selected disks`);
  }
  return out;
}

export { isRemoteUri };

/**
 * A running (or paused) domain gets a pull-mode backup job with the checkpoint as incremental
 * base; a shut-off one gets qemu-nbd per disk with every checkpoint's bitmap. Through a remote
 * URI the job's NBD server listens on TCP (TLS) on the hypervisor.
 */
export async function startExport(o: StartExportOptions): Promise<ExportRecord> {
  if (isRemoteUri(o.virsh.uri)) {
    if (!o.domain.active) {
      throw new VircptError('UNSUPPORTED',
        `domain ${o.domain.name} is shut off on the remote hypervisor (${o.virsh.uri}): its disks could only be served by qemu-nbd ` +
        'on that host, which vircptfs does not run; start the domain (paused is enough) to read it');
    }
    const targets = disksOfCheckpoint(o);
    return startRemoteBackupExport({ ...o, checkpoint: o.checkpoint.name, targets, remote: remoteTarget(o.virsh.uri, o.remote) });
  }
  const targets = disksOfCheckpoint(o);
  if (o.domain.active) {
    return startBackupExport({ ...o, checkpoint: o.checkpoint.name, targets });
  }
  const checkpoints = await listCheckpoints(o.virsh, o.domain.name);
  return startQemuNbdExport({ ...o, checkpoints, targets });
}
