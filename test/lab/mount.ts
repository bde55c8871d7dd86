// A real vircptfs mount for tests: the built program started in the foreground (-f) as a child
// process on a fresh mountpoint under /tmp, ready once the kernel lists it and the root reads;
// stopped the ways a user stops it (SIGTERM, umount, fusermount3 -u), and always cleaned up:
// a stale mount is lazily detached, the child killed by its PID, the mountpoint removed.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rmdir } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { VIRCPTFS } from './cli.js';
import { LAB_URI } from './lab.js';
import { processStartTime } from '../../src/exports/runtime.js';
import { lazyUnmount } from '../../src/fs/fuse/index.js';
import { requireTools } from './tools.js';

export interface MountOptions {
  /** libvirt URI or 'default' (default: the lab's). */
  source?: string;
  /** -o options (domain=..., idle=...). */
  options?: string[];
  /** Mount on this existing directory instead of a fresh one (it is removed by cleanup()). */
  dir?: string;
  /** How long to wait for the mount to list (ms). */
  readyTimeoutMs?: number;
  /** -d: the debug log (every virsh call) on stderr. */
  debug?: boolean;
  /** Extra environment (VIRCPTFS_HOST_ID: a second "backup server" on this machine). */
  env?: Record<string, string>;
}

export interface ChildExit {
  code: number | null;
  signal: string | null;
}

export type StopHow = 'SIGTERM' | 'SIGINT' | 'umount' | 'fusermount';

const POLL_MS = 50;
const EXIT_TIMEOUT_MS = 20_000;

/** A fresh, empty directory to mount on. */
export async function freshMountpoint(tag = 'mnt'): Promise<string> {
  const dir = `/tmp/vircptfs-${tag}-${process.pid}-${randomBytes(3).toString('hex')}`;
  await mkdir(dir, { mode: 0o755 });
  return dir;
}

/** The /proc/mounts entry at `dir` (mount(8)'s view: "fsname dir type opts 0 0"), if any. */
export async function mountEntry(dir: string): Promise<{ fsname: string; type: string; opts: string } | undefined> {
  const lines = (await readFile('/proc/mounts', 'utf8')).split('\n');
  const esc = dir.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
  const hit = lines.map((l) => l.split(' ')).findLast((f) => f[1] === esc);
  return hit ? { fsname: hit[0]!, type: hit[2]!, opts: hit[3]! } : undefined;
}

export class FsMount {
  #stderr = '';
  #exit: ChildExit | undefined;
  readonly exited: Promise<ChildExit>;

  /** `saysMounted`: the daemon logs to stderr, where it says when its mount is up. */
  constructor(readonly dir: string, readonly child: ResultPromise, private readonly saysMounted = false) {
    child.stderr?.on('data', (d: Buffer) => { this.#stderr += d.toString(); });
    this.exited = child.then(
      (r) => (this.#exit = { code: r.exitCode ?? null, signal: r.signal ?? null }),
      (e: { exitCode?: number; signal?: string }) => (this.#exit = { code: e.exitCode ?? null, signal: e.signal ?? null }),
    );
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** What the daemon wrote to stderr so far (its log). */
  get stderr(): string {
    return this.#stderr;
  }

  get exit(): ChildExit | undefined {
    return this.#exit;
  }

  /** The process is gone (exited and reaped; a zombie counts as gone). */
  get gone(): boolean {
    return this.#exit !== undefined || processStartTime(this.pid) === undefined;
  }

  path(...parts: string[]): string {
    return [this.dir, ...parts].join('/');
  }

  /** Waits until the kernel lists the mount and its root reads (or the daemon dies). */
  async ready(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.#exit) throw new Error(`vircptfs exited (${JSON.stringify(this.#exit)}) before mounting:\n${this.#stderr}`);
      // Where a dead mount of ours sat on the mountpoint, its entry and the bare directory the
      // daemon's take-over leaves (before its own mount) would pass the checks below: so, where
      // it logs to stderr, the daemon must also have said it mounted (its own mount is then up).
      const said = !this.saysMounted || /\binfo: mounted /.test(this.#stderr);
      const m = await mountEntry(this.dir);
      // A hanging mount (a dead daemon's, still held) must not hang the wait: readdir is raced.
      const lists = () => readdir(this.dir).then(() => true, () => false);
      if (said && m?.type === 'fuse.vircptfs' && (await Promise.race([lists(), sleep(2000, false, { ref: false })]))) return;
      await sleep(POLL_MS);
    }
    throw new Error(`vircptfs did not mount ${this.dir} within ${timeoutMs} ms:\n${this.#stderr}`);
  }

  /** Stops the daemon as a user would and waits for it to exit. */
  async stop(how: StopHow = 'SIGTERM', timeoutMs = EXIT_TIMEOUT_MS): Promise<ChildExit> {
    if (how === 'SIGTERM' || how === 'SIGINT') process.kill(this.pid, how);
    else if (how === 'umount') await execa('umount', [this.dir], { reject: false });
    else await execa('fusermount3', ['-u', this.dir], { reject: false });
    return this.waitExit(timeoutMs);
  }

  async waitExit(timeoutMs = EXIT_TIMEOUT_MS): Promise<ChildExit> {
    const r = await Promise.race([this.exited, sleep(timeoutMs, undefined, { ref: false })]);
    if (!r) {
      throw new Error(`vircptfs (pid ${this.pid}) did not exit within ${timeoutMs} ms; mounted: ${
        (await mountEntry(this.dir)) ? 'yes' : 'no'}; threads:\n${await threadStates(this.pid)}\n${this.#stderr}`);
    }
    return r;
  }

  /** Whatever state it is in: no mount, no process, no mountpoint. Idempotent, never throws. */
  async cleanup(): Promise<void> {
    if (await mountEntry(this.dir)) {
      await execa('fusermount3', ['-u', this.dir], { reject: false, timeout: 10_000 });
      if (await mountEntry(this.dir)) await lazyUnmount(this.dir).catch(() => {});
    }
    if (!this.#exit) {
      try { process.kill(this.pid, 'SIGTERM'); } catch { /* already gone */ }
      const r = await Promise.race([this.exited, sleep(10_000, undefined, { ref: false })]);
      if (!r) {
        try { process.kill(this.pid, 'SIGKILL'); } catch { /* already gone */ }
        await this.exited;
      }
    }
    if (await mountEntry(this.dir)) await lazyUnmount(this.dir).catch(() => {});
    await rmdir(this.dir).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.cleanup();
  }
}

/** Each thread's name, state and kernel wait channel: where a daemon that does not exit sits. */
async function threadStates(pid: number): Promise<string> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  const lines = await Promise.all(tasks.map(async (t) => {
    const read = (f: string) => readFile(`/proc/${pid}/task/${t}/${f}`, 'utf8').then((x) => x.trim(), () => '?');
    const stat = await read('stat');
    return `  ${t} ${await read('comm')} ${stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)} ${await read('wchan')}`;
  }));
  return lines.join('\n');
}

function fsArgs(dir: string, o: MountOptions): string[] {
  const opts = o.options ?? [];
  return [o.debug ? '-d' : '-f', ...(opts.length > 0 ? ['-o', opts.join(',')] : []), o.source ?? LAB_URI, dir];
}

/** Starts `vircptfs -f` on a fresh mountpoint and waits until it lists. Cleans up if it fails. */
export async function mountFs(o: MountOptions = {}): Promise<FsMount> {
  await requireTools('fusermount3', 'virsh');
  const dir = o.dir ?? (await freshMountpoint());
  const child = execa(process.execPath, [VIRCPTFS, ...fsArgs(dir, o)], {
    reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', env: { LC_ALL: 'C', ...o.env }, cleanup: true,
  });
  const m = new FsMount(dir, child, !(o.options ?? []).some((opt) => opt.startsWith('log=')));
  try {
    await m.ready(o.readyTimeoutMs ?? 30_000);
  } catch (err) {
    await m.cleanup();
    throw err;
  }
  return m;
}

/** Runs vircptfs to completion (startup errors): exit code and output. */
export async function runFs(args: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string; pid: number }> {
  const child = execa(process.execPath, [VIRCPTFS, ...args], { reject: false, timeout: timeoutMs, env: { LC_ALL: 'C' }, stdin: 'ignore' });
  const r = await child;
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), pid: child.pid ?? -1 };
}
