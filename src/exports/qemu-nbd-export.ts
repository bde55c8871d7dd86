// A shut-off domain's export: libvirt cannot run a backup job without a QEMU process, so each
// qcow2 is served read-only by qemu-nbd with the bitmaps of all the domain's checkpoints (-B
// repeats), one process and socket per disk. While qemu-nbd holds an image, starting the VM
// fails on QEMU's image lock ("Failed to get "write" lock"): the VM cannot change the disk under
// a reader, and releasing the export lets it start. --force-share is never used: it would serve
// a disk that changes underneath (torn data).
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VircptError } from '../errors.js';
import { runProgram } from '../run.js';
import type { Checkpoint } from '../libvirt/checkpoint.js';
import type { BlockInfo, DomainDetails } from '../libvirt/domain.js';
import type { Logger } from '../log.js';
import { writeRecord, type DiskExport, type ExportRecord } from './export.js';
import { processStartTime, type Instance } from './runtime.js';

export interface QemuNbdExportOptions {
  instance: Instance;
  log: Logger;
  domain: DomainDetails;
  checkpoints: Checkpoint[];
  targets: string[];
  sizes: Map<string, BlockInfo>;
}

const STOP_TIMEOUT_MS = 5_000;

export async function startQemuNbdExport(o: QemuNbdExportOptions): Promise<ExportRecord> {
  const { instance, domain } = o;
  await instance.prepare(domain.name);
  const dir = instance.domainDir(domain.name);
  const startedAt = new Date();
  const disks: DiskExport[] = [];
  try {
    for (const target of o.targets) disks.push(await serveDisk(o, dir, target));
  } catch (err) {
    await Promise.all(disks.map((d) => stopDisk(d)));
    await instance.cleanup(domain.name);
    throw err;
  }
  const rec: ExportRecord = {
    domain: domain.name,
    kind: 'qemu-nbd',
    owner: instance.id,
    checkpoint: undefined,
    startedAt: startedAt.toISOString(),
    scratchRoot: undefined,
    disks,
  };
  await writeRecord(dir, rec);
  o.log.info({ domain: domain.name, disks: o.targets }, `export started: ${domain.name} (shut off, qemu-nbd)`);
  return rec;
}

async function serveDisk(o: QemuNbdExportOptions, dir: string, target: string): Promise<DiskExport> {
  const disk = o.domain.disks.find((d) => d.target === target);
  const image = disk?.source;
  if (!disk || !image) throw new VircptError('DISK_NOT_FOUND', `domain ${o.domain.name} has no disk ${target} with an image file`);
  // Every checkpoint that put a bitmap on this disk: its dirty map is then one context away.
  const bitmaps = o.checkpoints.flatMap((c) => {
    const d = c.disks.find((x) => x.target === target && x.checkpoint === 'bitmap');
    return d ? [{ checkpoint: c.name, bitmap: d.bitmap ?? c.name }] : [];
  });
  const socket = path.join(dir, `${target}.sock`);
  const pidFile = path.join(dir, `${target}.qemu-nbd.pid`);
  const args = ['--read-only', '--format', disk.format, '--export-name', target, '--socket', socket,
    '--shared', '0', '--persistent', '--fork', '--pid-file', pidFile,
    ...bitmaps.flatMap((b) => ['--bitmap', b.bitmap]), image];
  const res = await runProgram('qemu-nbd', args, { timeoutMs: 30_000, env: { LC_ALL: 'C' } });
  if (res.exitCode !== 0) {
    const why = res.error?.code === 'ENOENT' ? 'not found: install the Debian package qemu-utils'
      : res.timedOut ? 'did not start within 30 s' : res.stderr || res.error?.message || `exit code ${res.exitCode ?? res.killedBy}`;
    const words = why.trim().split('\n').pop() ?? 'failed';
    throw new VircptError('LIBVIRT', `domain ${o.domain.name}, disk ${target}: qemu-nbd: ${words.replace(/^qemu-nbd:\s*/, '')}`);
  }
  return {
    target,
    size: o.sizes.get(target)?.capacity ?? 0,
    socket,
    exportName: target,
    dirtyContexts: Object.fromEntries(bitmaps.map((b) => [b.checkpoint, `qemu:dirty-bitmap:${b.bitmap}`])),
    pidFile,
  };
}

/** The pid in a qemu-nbd pid file, if that process still runs and is a qemu-nbd. */
export async function livePid(pidFile: string): Promise<number | undefined> {
  const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 0 || processStartTime(pid) === undefined) return undefined;
  const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmd.includes(pidFile) && cmd.split('\0')[0]?.endsWith('qemu-nbd') ? pid : undefined;
}

/** Sends a signal; a process that ended meanwhile (ESRCH) is what we wanted anyway. */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

async function stopDisk(d: DiskExport): Promise<void> {
  if (!d.pidFile) return;
  const pid = await livePid(d.pidFile);
  if (pid !== undefined) {
    // qemu-nbd may exit between livePid and the kill (a killed server, an earlier SIGTERM).
    signal(pid, 'SIGTERM');
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (processStartTime(pid) !== undefined && Date.now() < deadline) await sleep(20);
    if (processStartTime(pid) !== undefined) signal(pid, 'SIGKILL');
  }
  await rm(d.socket, { force: true });
  await rm(d.pidFile, { force: true });
}

export async function stopQemuNbdExport(instance: Instance, rec: ExportRecord, log: Logger): Promise<void> {
  await Promise.all(rec.disks.map((d) => stopDisk(d)));
  await instance.cleanup(rec.domain);
  log.info({ domain: rec.domain }, `export released: ${rec.domain} (qemu-nbd stopped)`);
}
