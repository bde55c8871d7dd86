// The three ways the benchmark serves the same 4 GiB disk as one file: vircptfs (its own backup
// job, started on first open), nbdfuse over a pull-mode backup job the bench starts itself
// (docs/lab.md), and QEMU's own FUSE export of a copy of the image (qemu-storage-daemon). Each is
// stopped by the PID the bench started, and each stop is idempotent.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chown, mkdir, mkdtemp, rm, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { backupXml } from '../src/libvirt/backup.js';
import { LAB_URI, virsh, type LabVm } from '../test/lab/lab.js';
import { mountEntry, mountFs } from '../test/lab/mount.js';
import { requireTools, run } from '../test/lab/tools.js';

/** The subjects' names, as the report prints them. */
export const VIRCPTFS = 'vircptfs';
export const NBDFUSE = 'nbdfuse';
export const QEMU = 'QEMU FUSE';

export interface Subject {
  readonly name: string;
  /** The 4 GiB file to read. */
  readonly file: string;
  /** The process serving it: its CPU time and (vircptfs) its peak RSS are read from /proc. */
  readonly pid: number;
  /** The NBD server behind it (QEMU, qemu-nbd), when its CPU time is reported too (the TLS rows). */
  readonly peerPid?: number;
  stop(): Promise<void>;
}

const POLL_MS = 100;
const READY_TIMEOUT_MS = 30_000;
const EXIT_TIMEOUT_MS = 10_000;
const JOB_END_TIMEOUT_MS = 15_000;

export async function waitFor(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(POLL_MS);
  }
}

/** A step that runs once, however often it is called. */
export function once(fn: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | undefined;
  return () => (p ??= fn());
}

/** Ends a child by its PID: waits (or signals first), then SIGTERM, then SIGKILL. */
export async function endChild(child: ChildProcess, exited: Promise<void>, signalFirst: boolean): Promise<void> {
  const gone = () => child.exitCode !== null || child.signalCode !== null;
  const steps = signalFirst ? (['SIGTERM', 'SIGKILL'] as const) : ([undefined, 'SIGTERM', 'SIGKILL'] as const);
  for (const sig of steps) {
    if (gone()) return;
    if (sig) {
      try { process.kill(child.pid!, sig); } catch { return; }
    }
    if (await Promise.race([exited.then(() => true), sleep(EXIT_TIMEOUT_MS, false)])) return;
  }
}

export function startChild(cmd: string, args: string[]): { child: ChildProcess; exited: Promise<void>; stderr: () => string } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  child.once('error', (e) => { err += String(e); });
  return { child, exited, stderr: () => err };
}

export async function unmountFuse(target: string): Promise<void> {
  if (!(await mountEntry(target))) return;
  await execa('fusermount3', ['-u', target], { reject: false, timeout: EXIT_TIMEOUT_MS });
  if (await mountEntry(target)) await execa('fusermount3', ['-uz', target], { reject: false, timeout: EXIT_TIMEOUT_MS });
}

/** vircptfs in the foreground on a fresh mountpoint; `nodeOptions` goes to its node (profiling). */
export async function startVircptfs(vm: LabVm, checkpoint: string, options: string[], nodeOptions?: string): Promise<Subject> {
  const saved = process.env.NODE_OPTIONS;
  if (nodeOptions) process.env.NODE_OPTIONS = nodeOptions; // mountFs's child inherits our env
  let m;
  try {
    m = await mountFs({ options: [`domain=${vm.name}`, ...options] });
  } finally {
    if (saved === undefined) delete process.env.NODE_OPTIONS;
    else process.env.NODE_OPTIONS = saved;
  }
  const mount = m;
  return { name: VIRCPTFS, file: mount.path(vm.name, checkpoint, 'sda.raw'), pid: mount.pid, stop: once(() => mount.cleanup()) };
}

/** A pull-mode backup job of the VM's sda: folder for its socket and scratch, XML, end. */
export class BackupJob {
  readonly dir: string;
  readonly socket: string;
  readonly #xml: string;
  #running = false;

  private constructor(readonly vm: LabVm, dir: string) {
    this.dir = dir;
    this.socket = path.join(dir, 'nbd.sock');
    this.#xml = path.join(dir, 'backup.xml');
  }

  /** QEMU (libvirt-qemu) must be able to create the socket: the folder is chowned to it (docs/lab.md). */
  static async prepare(vm: LabVm, checkpoint: string): Promise<BackupJob> {
    const dir = await mkdtemp('/var/tmp/vcptbench-nbd-');
    const job = new BackupJob(vm, dir);
    const [uid, gid] = await Promise.all([run('id', ['-u', 'libvirt-qemu']), run('id', ['-g', 'libvirt-qemu'])]);
    await chown(dir, Number(uid.trim()), Number(gid.trim()));
    const disks = [{ target: 'sda', scratch: path.join(dir, 'sda.scratch.qcow2') }];
    await writeFile(job.#xml, backupXml({ incremental: checkpoint, socket: job.socket, disks, skip: [] }));
    return job;
  }

  /** `virsh backup-begin` alone; returns its wall time in ms. */
  async begin(): Promise<number> {
    const t0 = performance.now();
    await virsh('backup-begin', this.vm.name, this.#xml);
    this.#running = true;
    return performance.now() - t0;
  }

  /** Ends the job (ours: we started it) and waits until libvirt has no job for the domain. */
  async end(): Promise<void> {
    if (!this.#running) return;
    await execa('virsh', ['-q', '-c', LAB_URI, 'domjobabort', this.vm.name], { reject: false });
    await waitFor(`the backup job of ${this.vm.name} to end`, JOB_END_TIMEOUT_MS, async () => (await this.vm.jobType()) === 'None');
    this.#running = false;
  }

  async remove(): Promise<void> {
    await this.end().catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** nbdfuse (libnbd's C FUSE client, multi-conn) over a backup job of the VM. */
export function startNbdfuse(job: BackupJob): Promise<Subject> {
  return startNbdfuseUri(`nbd+unix:///sda?socket=${job.socket}`, job.dir);
}

/** nbdfuse over an NBD URI; its pid file goes to `pidDir`. */
async function startNbdfuseUri(uri: string, pidDir: string): Promise<Subject> {
  await requireTools('nbdfuse', 'fusermount3');
  const dir = `/tmp/vcptbench-nbdfuse-${process.pid}-${randomBytes(3).toString('hex')}`;
  await mkdir(dir, { mode: 0o755 });
  const pidFile = path.join(pidDir, 'nbdfuse.pid');
  const p = startChild('nbdfuse', ['-r', '-P', pidFile, path.join(dir, 'sda.raw'), uri]);
  const stop = once(async () => {
    await unmountFuse(dir); // nbdfuse exits cleanly once unmounted (nbdfuse(1) -P)
    await endChild(p.child, p.exited, false);
    await unmountFuse(dir);
    await rmdir(dir).catch(() => undefined);
  });
  try {
    // nbdfuse writes its pid file once it serves.
    await waitFor('nbdfuse to serve', READY_TIMEOUT_MS, async () => {
      if (p.child.exitCode !== null) throw new Error(`nbdfuse exited (${p.child.exitCode}): ${p.stderr()}`);
      return (await execa('test', ['-s', pidFile], { reject: false })).exitCode === 0;
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { name: NBDFUSE, file: path.join(dir, 'sda.raw'), pid: p.child.pid!, stop };
}

/** QEMU's FUSE export of a qcow2 onto a regular file (mountpoint=FILE), read-only. */
export async function startQemuExport(image: string, workDir: string): Promise<Subject> {
  await requireTools('qemu-storage-daemon');
  const file = path.join(workDir, 'qsd-export.raw');
  await writeFile(file, '');
  const p = startChild('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=f,filename=${image}`,
    '--blockdev', 'driver=qcow2,node-name=q,file=f',
    '--export', `type=fuse,id=e,node-name=q,mountpoint=${file},writable=off`,
  ]);
  const stop = once(async () => {
    await endChild(p.child, p.exited, true); // qemu-storage-daemon unmounts on SIGTERM
    await unmountFuse(file);
    await rm(file, { force: true });
  });
  try {
    await waitFor('the QEMU FUSE export', READY_TIMEOUT_MS, async () => {
      if (p.child.exitCode !== null) throw new Error(`qemu-storage-daemon exited (${p.child.exitCode}): ${p.stderr()}`);
      return (await mountEntry(file))?.type.startsWith('fuse') ?? false;
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { name: QEMU, file, pid: p.child.pid!, stop };
}
