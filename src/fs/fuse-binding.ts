// The one module that loads @cocalc/fuse-native, patched by patches/ (see FUSE.md): a typed,
// promise-based mount whose every callback into the binding is answered exactly once, and
// never with a throw (a handler that does not answer blocks a libfuse worker for good).
import { execFile } from 'node:child_process';
import { readFile, realpath, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { VircptError, messageOf } from '../errors.js';

export interface FuseStat {
  mode: number;
  size: number;
  /** Milliseconds since the epoch, or a Date. */
  mtime: number | Date;
  atime?: number | Date;
  ctime?: number | Date;
  uid?: number;
  gid?: number;
  nlink?: number;
  ino?: number;
  /** 512-byte blocks really used: `du` and `cp --sparse=auto` read it. */
  blocks?: number;
  blksize?: number;
}

export interface FuseStatfs {
  bsize: number; frsize: number; blocks: number; bfree: number; bavail: number;
  files: number; ffree: number; favail: number; fsid: number; flag: number; namemax: number;
}

export interface FuseOpenResult {
  /** Handle passed back to read and release; 32 bits, 0 means none. */
  fh: number;
  /** Bypass the page cache for this open: reads go on until the filesystem returns 0 bytes,
   *  whatever getattr said the size was. Breaks shared mmap. */
  directIo?: boolean;
  /** Keep the pages cached by earlier opens of this file. */
  keepCache?: boolean;
}

/** Rejections are turned into errno by `options.toErrno` (EIO when absent or unknown). */
export interface FuseOperations {
  getattr(path: string): Promise<FuseStat>;
  readdir?(path: string): Promise<readonly string[]>;
  open?(path: string, flags: number): Promise<FuseOpenResult>;
  /** Copy at most `length` bytes into `buf` (valid only until the promise settles). */
  read?(path: string, fh: number, buf: Buffer, length: number, position: number): Promise<number>;
  release?(path: string, fh: number): Promise<void>;
  readlink?(path: string): Promise<string>;
  statfs?(path: string): Promise<FuseStatfs>;
}

export interface FuseMountOptions {
  fsname?: string;
  subtype?: string;
  allowOther?: boolean;
  defaultPermissions?: boolean;
  autoUnmount?: boolean;
  autoCache?: boolean;
  kernelCache?: boolean;
  readOnly?: boolean;
  /** Seconds. */
  attrTimeout?: number;
  entryTimeout?: number;
  uid?: number;
  gid?: number;
  /** Further -o options of libfuse 2 (`max_readahead=1048576`, `max_background=64`). */
  extraOptions?: readonly string[];
  /** A rejection of an operation -> positive errno; EIO when it throws or gives no errno. */
  toErrno?: (err: unknown) => number;
}

export interface FuseLoopExit {
  /** fuse_loop_mt's result (0, or -1 on error); -1 too when noticed through mountinfo. */
  status: number;
  /** The mount ended without unmount() from here (`umount MNT`, `fusermount3 -u MNT`). */
  external: boolean;
}

export interface FuseMount {
  readonly mountpoint: string;
  /** Settles when the FUSE loop has ended, however the mount ended. Never rejects. */
  readonly exited: Promise<FuseLoopExit>;
  onExit(cb: (exit: FuseLoopExit) => void): void;
  /** Detaches (lazily, like fusermount -uz) and waits for the loop to end: files still open
   *  keep it serving until they are closed. Idempotent. */
  unmount(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

// errno.h
const EIO = 5;
/** fuse-native.c copies the option string and the mountpoint into char[1024] buffers. */
const BINDING_STRING_MAX = 1023;
const MOUNTINFO_POLL_MS = 500;

type OptionKind = 'flag' | 'uint' | 'octal' | 'seconds' | 'name';
/** The -o options libfuse 2.9 (mount.c, fuse_lowlevel.c, fuse.c) accepts; another one mounts
 *  and then fails in fuse_new. Left out: fd/rootmode/user_id/group_id (set by libfuse),
 *  modules/subdir (a missing module fails the same way), SELinux contexts. */
const LIBFUSE2_OPTIONS: Readonly<Record<string, OptionKind>> = {
  allow_other: 'flag', allow_root: 'flag', auto_unmount: 'flag', nonempty: 'flag',
  default_permissions: 'flag', blkdev: 'flag', large_read: 'flag', ro: 'flag', rw: 'flag',
  suid: 'flag', nosuid: 'flag', dev: 'flag', nodev: 'flag', exec: 'flag', noexec: 'flag',
  async: 'flag', sync: 'flag', atime: 'flag', noatime: 'flag', dirsync: 'flag', debug: 'flag',
  async_read: 'flag', sync_read: 'flag', atomic_o_trunc: 'flag', no_remote_lock: 'flag',
  no_remote_flock: 'flag', no_remote_posix_lock: 'flag', big_writes: 'flag',
  splice_move: 'flag', splice_read: 'flag', splice_write: 'flag', no_splice_move: 'flag',
  no_splice_read: 'flag', no_splice_write: 'flag', hard_remove: 'flag', use_ino: 'flag',
  readdir_ino: 'flag', direct_io: 'flag', kernel_cache: 'flag', auto_cache: 'flag',
  noauto_cache: 'flag', noforget: 'flag', nopath: 'flag', intr: 'flag',
  max_read: 'uint', max_write: 'uint', max_readahead: 'uint', max_background: 'uint',
  congestion_threshold: 'uint', blksize: 'uint', remember: 'uint', uid: 'uint', gid: 'uint',
  intr_signal: 'uint', umask: 'octal',
  entry_timeout: 'seconds', negative_timeout: 'seconds', attr_timeout: 'seconds',
  ac_attr_timeout: 'seconds', fsname: 'name', subtype: 'name',
};
const VALUE_PATTERNS: Readonly<Record<Exclude<OptionKind, 'flag'>, RegExp>> = {
  uint: /^\d{1,10}$/, octal: /^[0-7]{1,4}$/, seconds: /^\d{1,9}(\.\d{1,9})?$/,
  name: /^[\w.:@/+-]{1,255}$/, // no ',' (the option separator), no '\\', no blanks
};

function checkOption(option: string): string {
  const eq = option.indexOf('=');
  const name = eq < 0 ? option : option.slice(0, eq);
  const kind = Object.hasOwn(LIBFUSE2_OPTIONS, name) ? LIBFUSE2_OPTIONS[name] : undefined;
  const value = eq < 0 ? undefined : option.slice(eq + 1);
  const ok = kind === 'flag' ? value === undefined
    : kind !== undefined && value !== undefined && VALUE_PATTERNS[kind].test(value)
      && (kind !== 'uint' || Number(value) <= 0xffffffff);
  if (!ok) throw new VircptError('INVALID', `FUSE option not accepted by libfuse 2: ${option}`);
  return option;
}

/** The -o list for the options, validated (exported for tests and `vircptfs --help`). */
export function fuseOptionList(o: FuseMountOptions): string[] {
  const named: Array<[unknown, string]> = [
    [o.allowOther, 'allow_other'], [o.defaultPermissions, 'default_permissions'],
    [o.autoUnmount, 'auto_unmount'], [o.autoCache, 'auto_cache'],
    [o.kernelCache, 'kernel_cache'], [o.readOnly, 'ro'],
  ];
  const list = named.filter(([on]) => on === true).map(([, name]) => name);
  const valued: Array<[unknown, string]> = [
    [o.fsname, 'fsname'], [o.subtype, 'subtype'], [o.attrTimeout, 'attr_timeout'],
    [o.entryTimeout, 'entry_timeout'], [o.uid, 'uid'], [o.gid, 'gid'],
  ];
  for (const [value, name] of valued) if (value !== undefined) list.push(`${name}=${String(value)}`);
  list.push(...(o.extraOptions ?? []));
  list.forEach(checkOption);
  if (`-o${list.join(',')}`.length > BINDING_STRING_MAX) {
    throw new VircptError('INVALID', 'FUSE options longer than the binding accepts');
  }
  return list;
}

/** libuv handles of this process (the binding's are unref'd: getActiveResourcesInfo misses them). */
export function countLibuvHandles(): number {
  return (process.report.getReport() as unknown as { libuv: unknown[] }).libuv.length;
}

interface MountinfoEntry { devId: string; mountpoint: string; fstype: string }

/** proc(5) /proc/pid/mountinfo: "id parent major:minor root mountpoint opts ... - fstype ...". */
export async function readMountinfo(): Promise<MountinfoEntry[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text.split('\n').filter(Boolean).map((line) => {
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    return { devId: fields[2] ?? '', mountpoint: unescape(fields[4] ?? ''), fstype: fields[sep + 1] ?? '' };
  });
}

async function fuseMountEntry(mountpoint: string): Promise<MountinfoEntry | undefined> {
  return (await readMountinfo()).findLast((m) => m.mountpoint === mountpoint && m.fstype.startsWith('fuse'));
}

/** FUSE.md: the kernel reads ahead 128 KiB on a FUSE mount; raise it after mounting. */
export async function setReadAhead(mountpoint: string, kb: number): Promise<void> {
  if (!Number.isInteger(kb) || kb < 0) throw new VircptError('INVALID', `bad read-ahead ${kb} KiB`);
  const entry = await fuseMountEntry(await realpath(mountpoint));
  if (!entry) throw new VircptError('NOT_FOUND', `no FUSE mount at ${mountpoint}`);
  await writeFile(`/sys/class/bdi/${entry.devId}/read_ahead_kb`, `${kb}\n`);
}

// The patched binding (index.js + fuse-native.c), as far as it is used here.
interface RawFuse { mount(cb: (err: Error | null) => void): void }
interface RawFuseClass {
  new (mnt: string, ops: object, opts: object): RawFuse;
  VIRCPT_PATCH?: { js: number; native: number };
  FOPEN_DIRECT_IO?: number;
  FOPEN_KEEP_CACHE?: number;
}
type RawCb = (...args: unknown[]) => void;

function loadBinding(): RawFuseClass {
  let Fuse: RawFuseClass;
  try {
    Fuse = createRequire(import.meta.url)('@cocalc/fuse-native') as RawFuseClass;
  } catch (err) {
    throw new VircptError('UNSUPPORTED', `cannot load @cocalc/fuse-native: ${messageOf(err)} (Debian: libfuse2 fuse3)`, { cause: err });
  }
  if (!Fuse.VIRCPT_PATCH) {
    throw new VircptError('UNSUPPORTED', '@cocalc/fuse-native is not patched: run npm ci (postinstall: scripts/patch-fuse.sh)');
  }
  return Fuse;
}

function errnoOf(err: unknown, toErrno: FuseMountOptions['toErrno']): number {
  let n = EIO;
  try { n = toErrno ? toErrno(err) : EIO; } catch { n = EIO; }
  return Number.isInteger(n) && n > 0 && n < 4096 ? n : EIO;
}

function msOf(t: number | Date | undefined, fallback: number): number {
  const ms = t instanceof Date ? t.getTime() : t ?? fallback;
  return Number.isFinite(ms) && ms >= 0 ? ms : fallback;
}

function toRawStat(s: FuseStat): object {
  const u = (v: number | undefined, d: number) => (Number.isSafeInteger(v) && (v as number) >= 0 ? v : d);
  const mtime = msOf(s.mtime, 0);
  return {
    mode: u(s.mode, 0), size: u(s.size, 0), uid: u(s.uid, 0), gid: u(s.gid, 0), nlink: u(s.nlink, 1),
    ino: u(s.ino, 0), blocks: u(s.blocks, 0), blksize: u(s.blksize, 0), dev: 0, rdev: 0,
    mtime, atime: msOf(s.atime, mtime), ctime: msOf(s.ctime, mtime),
  };
}

/** Runs op and answers cb exactly once: cb(...reply(value)), or cb(-errno) when op fails or
 *  its value is unusable (reply throws before anything is sent). */
function answer<T>(cb: RawCb, o: FuseMountOptions, op: () => Promise<T>, reply: (v: T) => unknown[]): void {
  let done = false;
  const send = (args: unknown[]) => { if (!done) { done = true; cb(...args); } };
  const fail = (err: unknown) => send([-errnoOf(err, o.toErrno)]);
  const ok = (v: T) => {
    let args: unknown[];
    try { args = reply(v); } catch (err) { return fail(err); }
    send(args);
  };
  try { op().then(ok, fail); } catch (err) { fail(err); }
}

function rawOperations(ops: FuseOperations, o: FuseMountOptions, Fuse: RawFuseClass): object {
  const raw: Record<string, (...args: never[]) => void> = {
    getattr: (path: string, cb: RawCb) => answer(cb, o, () => ops.getattr(path), (s) => [0, toRawStat(s)]),
  };
  const { readdir, open, read, release, readlink, statfs } = ops;
  if (readdir) raw.readdir = (path: string, cb: RawCb) => answer(cb, o, () => readdir.call(ops, path), (names) => [0, [...names]]);
  if (open) {
    raw.open = (path: string, flags: number, cb: RawCb) => answer(cb, o, () => open.call(ops, path, flags), (r) => {
      if (!Number.isInteger(r.fh) || r.fh < 0 || r.fh > 0x7fffffff) throw new RangeError(`bad fh ${r.fh}`);
      if (r.directIo && Fuse.FOPEN_DIRECT_IO === undefined) throw new Error('direct_io needs the patched addon');
      return [0, r.fh, (r.directIo ? Fuse.FOPEN_DIRECT_IO ?? 0 : 0) | (r.keepCache ? Fuse.FOPEN_KEEP_CACHE ?? 0 : 0)];
    });
  }
  if (read) {
    raw.read = (path: string, fh: number, buf: Buffer, len: number, pos: number, cb: RawCb) =>
      answer(cb, o, () => read.call(ops, path, fh, buf, len, pos), (n) => {
        if (!Number.isInteger(n) || n < 0 || n > len) throw new RangeError(`read returned ${n} of ${len}`);
        return [n]; // the binding takes a byte count where the error goes
      });
  }
  if (release) raw.release = (path: string, fh: number, cb: RawCb) => answer(cb, o, () => release.call(ops, path, fh), () => [0]);
  if (readlink) raw.readlink = (path: string, cb: RawCb) => answer(cb, o, () => readlink.call(ops, path), (t) => [0, t]);
  if (statfs) raw.statfs = (path: string, cb: RawCb) => answer(cb, o, () => statfs.call(ops, path), (s) => [0, s]);
  return raw;
}

function run(file: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(file, args, (err, _out, stderr) => (err ? reject(Object.assign(err, { stderr })) : resolve()));
  });
}

class Mount implements FuseMount {
  readonly exited: Promise<FuseLoopExit>;
  #ended = false;
  #requested = false;
  #unmounting: Promise<void> | undefined;
  #settleExit!: (exit: FuseLoopExit) => void;

  constructor(readonly mountpoint: string) {
    this.exited = new Promise((resolve) => { this.#settleExit = resolve; });
  }

  loopEnded(status: number): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#settleExit({ status, external: !this.#requested });
  }

  /** Without the patched addon the loop's end is not reported: notice the mount vanish. */
  watchMountinfo(): void {
    const timer = setInterval(() => {
      fuseMountEntry(this.mountpoint).then((m) => { if (!m) this.loopEnded(-1); }, () => {});
    }, MOUNTINFO_POLL_MS);
    timer.unref();
    void this.exited.then(() => clearInterval(timer));
  }

  onExit(cb: (exit: FuseLoopExit) => void): void {
    void this.exited.then(cb);
  }

  unmount(): Promise<void> {
    this.#unmounting ??= this.#detach().catch((err: unknown) => {
      this.#unmounting = undefined;
      throw err;
    });
    return this.#unmounting;
  }

  async #detach(): Promise<void> {
    this.#requested = true;
    if (!this.#ended) {
      // No shell: the binding's own unmount passes the path through exec().
      await run('fusermount', ['-u', '-z', '--', this.mountpoint]).catch(async (err: unknown) => {
        if (this.#ended || !(await fuseMountEntry(this.mountpoint))) return;
        throw new VircptError('IO', `fusermount -uz ${this.mountpoint} failed: ${messageOf(err)}`, { cause: err });
      });
    }
    await this.exited;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.unmount();
  }
}

/** Mounts ops at mountpoint (an existing directory); resolves once the kernel has sent INIT. */
export async function mountFuse(mountpoint: string, ops: FuseOperations, options: FuseMountOptions = {}): Promise<FuseMount> {
  const extraOptions = fuseOptionList(options);
  const Fuse = loadBinding();
  const dir = await realpath(mountpoint).catch((err: unknown) => {
    throw new VircptError('NOT_FOUND', `mountpoint ${mountpoint}: ${messageOf(err)}`, { cause: err });
  });
  if (dir.length > BINDING_STRING_MAX || !(await stat(dir)).isDirectory()) {
    throw new VircptError('INVALID', `mountpoint ${mountpoint} is not a directory or too long`);
  }
  const mount = new Mount(dir);
  const native = (Fuse.VIRCPT_PATCH?.native ?? 0) >= 1;
  const fuse = new Fuse(dir, rawOperations(ops, options, Fuse), {
    timeout: false, // FUSE.md: else every operation fails with ETIMEDOUT after 15 s
    extraOptions,
    onLoopExit: (status: number) => mount.loopEnded(status),
  });
  await new Promise<void>((resolve, reject) => {
    fuse.mount((err) => (err ? reject(new VircptError('IO', `cannot mount FUSE at ${dir}: ${err.message}`, { cause: err })) : resolve()));
  });
  if (!native) mount.watchMountinfo();
  return mount;
}
