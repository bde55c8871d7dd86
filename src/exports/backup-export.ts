// A running domain's export: a libvirt pull-mode backup job serving every chosen disk over NBD on
// a Unix socket of ours, frozen at the job's start (copy-before-write into scratch images).
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VircptError, messageOf } from '../errors.js';
import { withFrozenGuest } from '../libvirt/agent.js';
import { abortJob, backupXml, beginBackupFrom, describeBackup, exportBitmapName, jobInfo, type BackupJob, type JobInfo } from '../libvirt/backup.js';
import type { BlockInfo, DomainDetails } from '../libvirt/domain.js';
import type { CallOptions, Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import type { ExportRecord } from './export.js';
import { jobMatches, writeRecord } from './export.js';
import { freePort as releasePort } from './remote.js';
import { Instance, instanceAlive, ownerOfPath } from './runtime.js';
import { assertScratchFolder, assertScratchRoom, DEFAULT_SCRATCH_RESERVE, type ScratchReserve } from './scratch-guard.js';

export interface BackupExportOptions {
  virsh: Virsh;
  instance: Instance;
  log: Logger;
  domain: DomainDetails;
  /** The incremental base: its bitmap becomes each disk's dirty context. */
  checkpoint: string;
  targets: string[];
  sizes: Map<string, BlockInfo>;
  scratchRoot?: string | undefined;
  /** No export starts while the scratch filesystem has less free space than this (default 1 GiB). */
  scratchReserve?: ScratchReserve | undefined;
  /** Guest-agent fsfreeze around the job's start (default true). */
  freeze?: boolean;
  /** The domain's job state, when the caller asked for it alongside its other look-ups. */
  job?: Promise<JobInfo> | undefined;
}

const JOB_END_TIMEOUT_MS = 10_000;
/** The deadline of each libvirt call of a release: a libvirtd that hangs must not hang an unmount. */
const RELEASE_CALL_MS = 10_000;

/**
 * Refuses when the domain already has a job: ours (JOB_ACTIVE) or anyone else's (FOREIGN_JOB).
 * A job of ours whose instance died (killed mid-start, before cleanup could see it) is aborted,
 * and so is one of this very instance (not `vircpt export`'s): a start whose outcome it never
 * learned (libvirt went away during backup-begin), since it starts an export only when it has none.
 */
export async function assertNoJob(virsh: Virsh, instance: Instance, domain: string, log?: Logger, asked?: Promise<JobInfo>): Promise<void> {
  // libvirt allows one job per domain; a second backup-begin blocks 30 s on the job lock first.
  const info = await (asked ?? jobInfo(virsh, domain));
  if (info.type === 'None') return;
  const job = info.operation === 'Backup' ? await describeBackup(virsh, domain) : undefined;
  const owner = ownerOfPath(instance.dirs, job?.socket);
  const orphan = owner === instance.id && !instance.persistent;
  if (owner !== undefined && (orphan || !instanceAlive(owner))) {
    log?.warn({ domain }, orphan
      ? `domain ${domain}: aborting the backup job of an earlier start whose outcome was unknown`
      : `domain ${domain}: aborting the backup job left by crashed instance ${owner}`);
    await abortJobAndWait(virsh, domain, (j) => j.socket === job?.socket);
    await new Instance(owner, instance.dirs).cleanup(domain);
    return;
  }
  if (owner !== undefined) {
    throw new VircptError('JOB_ACTIVE', `domain ${domain} is already exported by vircptfs (instance ${owner})`);
  }
  throw new VircptError(
    'FOREIGN_JOB',
    `domain ${domain} has a running ${info.operation || 'libvirt'} job that vircptfs did not start; it is left alone`,
  );
}

export async function startBackupExport(o: BackupExportOptions): Promise<ExportRecord> {
  const { virsh, instance, domain } = o;
  await assertNoJob(virsh, instance, domain.name, o.log, o.job);
  if (o.scratchRoot !== undefined) await assertScratchFolder(o.scratchRoot, domain.name);
  await instance.prepare(domain.name, domain.qemuUser, o.scratchRoot);
  const socket = path.join(instance.domainDir(domain.name), 'nbd.sock');
  const scratchDir = instance.scratchDir(domain.name, o.scratchRoot);
  try {
    await assertScratchRoom(scratchDir, o.scratchReserve ?? DEFAULT_SCRATCH_RESERVE, domain.name);
  } catch (err) {
    await instance.cleanup(domain.name, o.scratchRoot);
    throw err;
  }
  const chosen = new Set(o.targets);
  const xml = backupXml({
    incremental: o.checkpoint,
    socket,
    disks: o.targets.map((t) => ({ target: t, scratch: scratchPath(scratchDir, t) })),
    skip: domain.disks.map((d) => d.target).filter((t) => !chosen.has(t)),
  });
  // Everything the record holds is set here (backupXml names the exports and bitmaps), so it is
  // written once, before the job starts: if this process dies right after backup-begin, a later
  // instance still finds the job's socket here and cleans it up.
  const rec = recordOf(o, socket, scratchDir, new Date());
  // The job's XML beside the record (removed with the folder): backup-begin then starts at once.
  const xmlFile = path.join(instance.domainDir(domain.name), 'backup.xml');
  await Promise.all([writeRecord(instance.domainDir(domain.name), rec), writeFile(xmlFile, xml, { mode: 0o600 })]);
  try {
    const begin = () => beginBackupFrom(virsh, domain.name, xmlFile);
    await (o.freeze === false ? begin() : withFrozenGuest(virsh, domain, o.log, begin));
  } catch (err) {
    const started = await jobStartedAnyway(virsh, domain.name, socket);
    if (started === true) {
      // libvirt started it although the call failed (a timeout, a lost connection): it is ours.
      o.log.warn({ domain: domain.name }, `domain ${domain.name}: backup-begin failed (${messageOf(err)}) but the job runs with our socket; using it`);
      o.log.info({ domain: domain.name, checkpoint: o.checkpoint, socket }, `export started: ${domain.name} (checkpoint ${o.checkpoint})`);
      return rec;
    }
    // Unknown (libvirt does not answer): the record stays, so whoever comes next (this instance's
    // next start, its release at exit, a later run) finds the job, if any, and ends it.
    if (started === false) await instance.cleanup(domain.name, o.scratchRoot);
    if (err instanceof VircptError) {
      throw new VircptError(err.code, `domain ${domain.name}, checkpoint ${o.checkpoint}: ${err.message}`, { cause: err });
    }
    throw err;
  }
  // backup-begin returns once QEMU serves the export under those names: no backup-dumpxml
  // (connecting to the socket proves the job is there).
  o.log.info({ domain: domain.name, checkpoint: o.checkpoint, socket }, `export started: ${domain.name} (checkpoint ${o.checkpoint})`);
  return rec;
}

function recordOf(o: BackupExportOptions, socket: string, scratchDir: string, startedAt: Date): ExportRecord {
  return {
    domain: o.domain.name,
    kind: 'backup',
    owner: o.instance.id,
    checkpoint: o.checkpoint,
    startedAt: startedAt.toISOString(),
    scratchRoot: o.scratchRoot,
    disks: o.targets.map((t) => ({
      target: t,
      size: o.sizes.get(t)?.capacity ?? 0,
      socket,
      exportName: t,
      dirtyContexts: { [o.checkpoint]: `qemu:dirty-bitmap:${exportBitmapName(t)}` },
      scratch: scratchPath(scratchDir, t),
    })),
  };
}

const scratchPath = (dir: string, target: string): string => path.join(dir, `${target}.scratch.qcow2`);

/** After a failed backup-begin: whether the domain runs a job with our socket (undefined: libvirt
 *  does not answer, so nobody knows). */
async function jobStartedAnyway(virsh: Virsh, domain: string, socket: string): Promise<boolean | undefined> {
  try {
    return (await currentJob(virsh, domain))?.socket === socket;
  } catch {
    return undefined;
  }
}

/** Ends our backup job (and only ours: the job's socket must be the one we recorded). */
export async function stopBackupExport(virsh: Virsh, instance: Instance, rec: ExportRecord, log: Logger): Promise<void> {
  // A failure to ask (not "no job") leaves the record in place, so a later run still ends the job.
  await abortOurJob(virsh, rec);
  if (rec.remote !== undefined) releasePort(rec.remote.port);
  await instance.cleanup(rec.domain, rec.scratchRoot);
  log.info({ domain: rec.domain, checkpoint: rec.checkpoint }, `export released: ${rec.domain}`);
}

/** Aborts the record's job if it still runs (its socket is the recorded one) and waits until it
 *  is gone; each libvirt call has the release deadline. */
export async function abortOurJob(virsh: Virsh, rec: ExportRecord): Promise<void> {
  await abortJobAndWait(virsh, rec.domain, (j) => jobMatches(j, rec));
}

/**
 * Aborts the domain's job if it is still the one meant (`same`), and waits until it is gone. The
 * abort goes through the virsh shell (no process to start: 25-40 ms less for every release);
 * after any failure the job is asked for again, since the abort may have worked with its answer
 * lost (a timeout, libvirtd restarting) or the job may have ended on its own (domain destroyed).
 * Still there, and still ours: the abort is tried once more as a virsh process of its own (a
 * shell that lost libvirtd never sent it), and that one's failure is the release's.
 */
export async function abortJobAndWait(virsh: Virsh, domain: string, same: (job: BackupJob) => boolean): Promise<void> {
  const call = { timeoutMs: RELEASE_CALL_MS };
  const ours = (j: BackupJob | undefined): j is BackupJob => j !== undefined && same(j);
  const job = await currentJob(virsh, domain, call);
  if (!ours(job)) return;
  // After a failed abort: is the job still there and ours (libvirt not answering: assume so)?
  const stillOurs = async () => ours(await currentJob(virsh, domain, call).catch(() => job));
  await abortJob(virsh, domain, { ...call, checkable: true }).catch(async () => {
    if (!(await stillOurs())) return;
    await abortJob(virsh, domain, call).catch(async (err: unknown) => {
      if (await stillOurs()) throw err;
    });
  });
  await waitJobGone(virsh, domain, same);
}

/** The domain's backup job; undefined only when libvirt says there is none (or no running domain). */
export async function currentJob(virsh: Virsh, domain: string, opts: CallOptions = { timeoutMs: RELEASE_CALL_MS }): Promise<BackupJob | undefined> {
  try {
    return await describeBackup(virsh, domain, opts);
  } catch (err) {
    if (err instanceof VircptError && (err.code === 'DOMAIN_NOT_FOUND' || err.code === 'DOMAIN_NOT_RUNNING')) return undefined;
    throw err;
  }
}

export async function waitJobGone(virsh: Virsh, domain: string, same: (job: BackupJob) => boolean): Promise<void> {
  const deadline = Date.now() + JOB_END_TIMEOUT_MS;
  for (let asked = 0; Date.now() < deadline; asked++) {
    let job: BackupJob | undefined;
    try {
      job = await currentJob(virsh, domain);
    } catch {
      await sleep(50); // failed to ask: ask again
      continue;
    }
    if (!job || !same(job)) return;
    // domjobabort returns before libvirt has ended a backup job (the end comes with QEMU's
    // block-job events, within milliseconds): short waits (5, 10, then 20 ms), so a release is
    // not held up longer than that.
    await sleep(Math.min(20, 5 << asked));
  }
  throw new VircptError('TIMEOUT', `domain ${domain}: the backup job did not end within ${JOB_END_TIMEOUT_MS / 1000} s`);
}
