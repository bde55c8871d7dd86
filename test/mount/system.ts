// What a mount(8) test looks at on the machine: mount(8) itself run with or without an
// environment, the daemon found by its mountpoint in /proc, /proc/mounts and libmount's utab,
// and /etc/fstab (backed up and restored byte for byte).
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { processStartTime } from '../../src/exports/runtime.js';
import { lazyUnmount } from '../../src/fs/fuse/index.js';
import { mountEntry } from '../lab/mount.js';

export { mountEntry };

const POLL_MS = 50;
/** libmount's table of userspace options (_netdev, ...) of helper mounts (util-linux, utab). */
const UTAB = '/run/mount/utab';
const FSTAB = '/etc/fstab';

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Where mount(8) and umount(8) are: the tests also run them with no PATH at all. */
export async function which(cmd: string): Promise<string> {
  const r = await execa('sh', ['-c', `command -v ${cmd}`], { reject: false });
  const p = String(r.stdout).trim();
  if (r.exitCode !== 0 || !p.startsWith('/')) throw new Error(`${cmd} is required for this test: install the Debian package mount`);
  return p;
}

/** Runs a program by absolute path; `bare` = `env -i` (no PATH, no HOME: as systemd runs mount). */
export async function runProgram(file: string, args: string[], bare = false, timeout = 120_000): Promise<Run> {
  const r = await execa(file, args, {
    reject: false, timeout, stdin: 'ignore', ...(bare ? { env: {}, extendEnv: false } : { env: { LC_ALL: 'C' } }),
  });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** The lines of stderr that say what went wrong (the usage hint after a usage error is not one). */
export function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !/^\(vircptfs --help for usage\)$/.test(l));
}

export async function freshDir(tag: string): Promise<string> {
  const dir = `/tmp/vircptfs-mt-${tag}-${process.pid}-${randomBytes(3).toString('hex')}`;
  await mkdir(dir, { mode: 0o755 });
  return dir;
}

function argvOf(pid: string): Promise<string[] | undefined> {
  return readFile(`/proc/${pid}/cmdline`, 'utf8').then((s) => s.split('\0').filter(Boolean), () => undefined);
}

/** Live vircptfs processes (node running vircptfs.js, zombies excluded) whose arguments name `dir`. */
export async function daemonsOf(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const pid of (await readdir('/proc')).filter((e) => /^\d+$/.test(e))) {
    const argv = await argvOf(pid);
    if (argv && argv[1]?.endsWith('/vircptfs.js') && argv.includes(dir) && processStartTime(Number(pid)) !== undefined) {
      pids.push(Number(pid));
    }
  }
  return pids;
}

/** The one daemon serving `dir`. */
export async function daemonOf(dir: string): Promise<number> {
  const pids = await daemonsOf(dir);
  if (pids.length !== 1) throw new Error(`expected one vircptfs daemon for ${dir}, found ${JSON.stringify(pids)}`);
  return pids[0]!;
}

/** Waits until `cond` holds; false when the time is up. */
export async function waitFor(cond: () => Promise<boolean> | boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(POLL_MS);
  }
}

/** Exited (a zombie counts: nothing here reaps orphans). */
export function gone(pid: number): boolean {
  return processStartTime(pid) === undefined;
}

export async function utabEntries(dir: string): Promise<string[]> {
  const text = await readFile(UTAB, 'utf8').catch(() => '');
  return text.split('\n').filter((l) => l.split(' ').includes(`TARGET=${dir}`));
}

/**
 * Unmounts whatever is at `dir` and ends the daemons serving it (by PID, after giving them the
 * unmount to exit on), removes the directory. Never throws: for after().
 */
export async function cleanupMountpoint(dir: string): Promise<void> {
  const pids = await daemonsOf(dir).catch(() => []);
  for (let i = 0; i < 3 && (await mountEntry(dir)); i++) {
    await execa('umount', [dir], { reject: false, timeout: 10_000 });
    if (await mountEntry(dir)) await lazyUnmount(dir).catch(() => {});
  }
  // SIGTERM first: the daemon releases its exports on it; SIGKILL would leave them to the next mount.
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    if (await waitFor(() => pids.every(gone), 10_000)) break;
    for (const pid of pids.filter((p) => !gone(p))) {
      try { process.kill(pid, signal); } catch { /* already gone */ }
    }
  }
  await rmdir(dir).catch(() => {});
}

/** /etc/fstab as it was; restore() writes it back (also its absence). */
export class FstabBackup {
  private constructor(readonly original: string | undefined) {}

  static async take(): Promise<FstabBackup> {
    return new FstabBackup(await readFile(FSTAB, 'utf8').catch(() => undefined));
  }

  async append(line: string): Promise<void> {
    const now = await readFile(FSTAB, 'utf8').catch(() => '');
    await writeFile(FSTAB, `${now}${now === '' || now.endsWith('\n') ? '' : '\n'}${line}\n`);
  }

  async restore(): Promise<void> {
    if (this.original === undefined) await rm(FSTAB, { force: true });
    else await writeFile(FSTAB, this.original);
  }
}

/** Where a daemon logs without -o log= on a machine with no syslog (/dev/log): src/cli/daemon.ts. */
export const DEFAULT_LOG = '/var/log/vircptfs.log';

/** For failure messages: a process's state line and its threads' states. */
export async function processState(pid: number): Promise<string> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => 'gone');
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  const states = await Promise.all(tasks.map((t) => readFile(`/proc/${pid}/task/${t}/stat`, 'utf8')
    .then((s) => s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3), () => '?')));
  return `${stat.trim()} | threads: ${states.join('')}`;
}

/** For failure messages: the log lines that mention `dir` or follow the last one that does. */
export async function logTail(log: string, dir: string): Promise<string> {
  const lines = (await readFile(log, 'utf8').catch(() => '')).split('\n');
  const first = lines.findIndex((l) => l.includes(dir));
  return first < 0 ? `(no line about ${dir} in ${log})` : lines.slice(first).slice(-40).join('\n');
}
