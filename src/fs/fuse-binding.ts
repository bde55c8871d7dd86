// The one module that loads @cocalc/fuse-native, patched by patches/ (see FUSE.md): a typed,
// promise-based mount whose every callback into the binding is answered exactly once, and
// never with a throw (a handler that does not answer blocks a libfuse worker for good).
import { execFile } from 'node:child_process';
import { readFile, realpath, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { promisify } from 'node:util';
import { VircptError, messageOf } from '../errors.js';

export interface FuseStat {
  mode: number;
  size: number;
  /** Milliseconds since the epoch, or a Date; atime and ctime default to mtime. */
  mtime: number | Date;
  atime?: number | Date;
  ctime?: number | Date;
  uid?: number; gid?: number; nlink?: number; ino?: number; blksize?: number;
  /** 512-byte blocks really used: `du` and `cp --sparse=auto` read it. */
  blocks?: number;
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
  /** SEEK_DATA or SEEK_HOLE (the kernel answers the other whences itself): the new offset;
   *  reject with ENXIO past the end, or when SEEK_DATA finds no data after `offset`. */
  lseek?(path: string, fh: number, offset: number, whence: number): Promise<number>;
}

export interface FuseMountOptions {
  fsname?: string; subtype?: string;
  allowOther?: boolean; defaultPermissions?: boolean; autoUnmount?: boolean;
  autoCache?: boolean; kernelCache?: boolean; readOnly?: boolean;
  /** Seconds. */
  attrTimeout?: number; entryTimeout?: number;
  /** Owner of every file (libfuse's uid=/gid=; 0 is kept, unlike the binding's own options). */
  uid?: number; gid?: number;
  /** Further -o options of libfuse 3 (`max_readahead=1048576`, `max_background=64`). */
  extraOptions?: readonly string[];
  /** A rejection of an operation -> positive errno; EIO when it throws or gives no errno. */
  toErrno?: (err: unknown) => number;
}

export interface FuseLoopExit {
  /** fuse_loop_mt's result (0, or -1 on error); undefined when the mount left this process's
   *  mount namespace while its loop still serves a copy in another one. */
  status: number | undefined;
  /** The mount ended without unmount() from here (`umount MNT`, `fusermount3 -u MNT`). */
  external: boolean;
}

export interface FuseMount {
  readonly mountpoint: string;
  /** Settles once the mount is no longer served here, however it ended: its loop ended, or it
   *  is gone from this mount namespace with no file left open. Never rejects. */
  readonly exited: Promise<FuseLoopExit>;
  onExit(cb: (exit: FuseLoopExit) => void): void;
  /** Detaches (lazily, like fusermount -uz), then waits for `exited`: files still open keep
   *  the mount serving until they are closed. Idempotent. */
  unmount(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const { EIO } = constants.errno;
/** fuse-native.c copies the option string and the mountpoint into char[1024] buffers. */
const BINDING_STRING_MAX = 1023;
const MOUNTINFO_POLL_MS = 500;

/** The -o options of libfuse 3.14 (mount.c, fuse_lowlevel.c, fuse.c, helper.c's connection
 *  options, which the patched core applies in init), each tried here on a real mount. libfuse 3
 *  refuses any other before mounting; checking first gives a one-line error naming it. Gone
 *  since libfuse 2: nonempty (always allowed), big_writes, and what libfuse 3 leaves to the file
 *  system's init (use_ino, readdir_ino, direct_io, hard_remove, nopath, intr). Left out: fd,
 *  rootmode, user_id, group_id (libfuse sets them), modules and subdir (a missing module fails
 *  late), blkdev (the kernel refuses it for fuse), SELinux contexts. */
const LIBFUSE_FLAGS = new Set(('allow_other allow_root auto_unmount default_permissions ' +
  'ro rw suid nosuid dev nodev exec noexec async sync atime noatime dirsync debug async_read ' +
  'sync_read atomic_o_trunc no_remote_lock no_remote_flock no_remote_posix_lock ' +
  'splice_move splice_read splice_write no_splice_move no_splice_read no_splice_write ' +
  'kernel_cache auto_cache noauto_cache noforget writeback_cache no_writeback_cache').split(' '));
const UINT = /^\d{1,10}$/; // %u; bounded below
const SECONDS = /^\d{1,9}(\.\d{1,9})?$/; // %lf
const NAME = /^(?:(?![,\\])[!-~]){1,255}$/; // printable ASCII but ',' (the separator) and '\\'
const LIBFUSE_VALUED: Readonly<Record<string, RegExp>> = {
  max_read: UINT, max_write: UINT, max_readahead: UINT, max_background: UINT, congestion_threshold: UINT,
  remember: UINT, uid: UINT, gid: UINT, time_gran: UINT, umask: /^[0-7]{1,4}$/,
  entry_timeout: SECONDS, negative_timeout: SECONDS, attr_timeout: SECONDS, ac_attr_timeout: SECONDS,
  fsname: NAME, subtype: NAME,
};

function checkOption(option: string): void {
  const [name = '', value] = option.split(/=(.*)/s);
  const pattern = Object.hasOwn(LIBFUSE_VALUED, name) ? LIBFUSE_VALUED[name] : undefined;
  const ok = value === undefined ? LIBFUSE_FLAGS.has(name)
    : pattern !== undefined && pattern.test(value) && (pattern !== UINT || Number(value) <= 0xffffffff);
  if (!ok) throw new VircptError('INVALID', `FUSE option not accepted by libfuse 3: ${option}`);
}

/** The -o list the options give, each checked against what libfuse 3 accepts. */
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

export interface MountinfoEntry { devId: string; mountpoint: string; fstype: string; source: string }

/** proc(5) /proc/pid/mountinfo: "id parent major:minor root mountpoint opts ... - fstype source ...". */
export async function readMountinfo(): Promise<MountinfoEntry[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text.split('\n').filter(Boolean).map((line) => {
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    const at = (i: number) => unescape(fields[i] ?? '');
    return { devId: at(2), mountpoint: at(4), fstype: at(sep + 1), source: at(sep + 2) };
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
interface RawFuse { mount(cb: (err: Error | null) => void): void; releaseNative(): void }
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
    throw new VircptError('UNSUPPORTED', `cannot load @cocalc/fuse-native: ${messageOf(err)} (Debian: fuse3 libfuse3-3)`, { cause: err });
  }
  if (!Fuse.VIRCPT_PATCH) {
    throw new VircptError('UNSUPPORTED', '@cocalc/fuse-native is not patched: run npm ci (postinstall: scripts/patch-fuse.sh)');
  }
  return Fuse;
}

function errnoOf(err: unknown, toErrno: FuseMountOptions['toErrno']): number {
  let n = EIO;
  try { n = toErrno?.(err) ?? EIO; } catch { /* EIO */ }
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
  try { Promise.resolve(op()).then(ok, fail); } catch (err) { fail(err); }
}

function rawOperations(ops: FuseOperations, o: FuseMountOptions, Fuse: RawFuseClass, presence: Presence): object {
  const raw: Record<string, (...args: never[]) => void> = {
    getattr: (path: string, cb: RawCb) => answer(cb, o, () => ops.getattr(path), (s) => [0, toRawStat(s)]),
  };
  const { readdir, open, read, release, readlink, statfs, lseek } = ops;
  if (readdir) raw.readdir = (path: string, cb: RawCb) => answer(cb, o, () => readdir.call(ops, path), (names) => [0, [...names]]);
  if (open) {
    raw.open = (path: string, flags: number, cb: RawCb) => answer(cb, o, () => open.call(ops, path, flags), (r) => {
      // The core takes an int32 and hands it back as a uint32: any 32-bit value round-trips.
      if (!Number.isInteger(r.fh) || r.fh < 0 || r.fh > 0xffffffff) throw new RangeError(`bad fh ${r.fh}`);
      if (r.directIo && Fuse.FOPEN_DIRECT_IO === undefined) throw new Error('direct_io needs the patched addon');
      presence.opened(); // libfuse sends exactly one release per successful open
      return [0, r.fh, (r.directIo ? Fuse.FOPEN_DIRECT_IO ?? 0 : 0) | (r.keepCache ? Fuse.FOPEN_KEEP_CACHE ?? 0 : 0)];
    });
    raw.release = (path: string, fh: number, cb: RawCb) => {
      presence.released();
      answer(cb, o, async () => release?.call(ops, path, fh), () => [0]);
    };
  }
  if (read) {
    raw.read = (path: string, fh: number, buf: Buffer, len: number, pos: number, cb: RawCb) =>
      answer(cb, o, () => read.call(ops, path, fh, buf, len, pos), (n) => {
        if (!Number.isInteger(n) || n < 0 || n > len) throw new RangeError(`read returned ${n} of ${len}`);
        return [n]; // the binding takes a byte count where the error goes
      });
  }
  if (readlink) raw.readlink = (path: string, cb: RawCb) => answer(cb, o, () => readlink.call(ops, path), (t) => [0, t]);
  if (statfs) raw.statfs = (path: string, cb: RawCb) => answer(cb, o, () => statfs.call(ops, path), (s) => [0, s]);
  if (lseek) {
    raw.lseek = (path: string, fh: number, offset: number, whence: number, cb: RawCb) =>
      answer(cb, o, () => lseek.call(ops, path, fh, offset, whence), (pos) => {
        if (!Number.isSafeInteger(pos) || pos < 0) throw new RangeError(`lseek returned ${pos}`);
        return [0, pos];
      });
  }
  return raw;
}

/** Open files, and whether the mount is still in this process's mount namespace. */
interface Presence { opened(): void; released(): void }

class Mount implements FuseMount, Presence {
  readonly exited: Promise<FuseLoopExit>;
  #open = 0;
  #absentPolls = 0;
  #ended = false;
  #requested = false;
  #unmounting: Promise<void> | undefined;
  #settleExit!: (exit: FuseLoopExit) => void;

  constructor(readonly mountpoint: string, readonly devId: string, readonly releaseNative: () => void) {
    this.exited = new Promise((resolve) => { this.#settleExit = resolve; });
    const timer = setInterval(() => this.#check(), MOUNTINFO_POLL_MS).unref();
    void this.exited.then(() => clearInterval(timer));
  }

  opened(): void { this.#open++; }
  released(): void { this.#open--; }

  loopEnded(status: number | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#settleExit({ status, external: !this.#requested });
  }

  /** A mount namespace copied while mounted (libvirt starts each QEMU in one) keeps the FUSE
   *  connection, so the loop goes on after an unmount here: gone from this namespace with no
   *  file open, on two polls in a row (the loop's own end, when it comes, is reported first),
   *  counts as ended, and the loop no longer holds the process. */
  #check(): void {
    readMountinfo().then((all) => {
      const gone = this.#open === 0 && !all.some((m) => m.devId === this.devId);
      this.#absentPolls = gone ? this.#absentPolls + 1 : 0;
      if (this.#absentPolls < 2 || this.#ended) return;
      this.releaseNative();
      this.loopEnded(undefined);
    }, () => {});
  }

  onExit(cb: (exit: FuseLoopExit) => void): void { void this.exited.then(cb); }

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
      await promisify(execFile)('fusermount', ['-u', '-z', '--', this.mountpoint]).catch(async (err: unknown) => {
        if (this.#ended || !(await readMountinfo()).some((m) => m.devId === this.devId)) return;
        throw new VircptError('IO', `fusermount -uz ${this.mountpoint} (Debian: fuse3): ${messageOf(err)}`, { cause: err });
      });
    }
    await this.exited;
  }

  [Symbol.asyncDispose](): Promise<void> { return this.unmount(); }
}

/** Mounts ops at mountpoint (an existing directory); resolves once the kernel has sent INIT. */
export async function mountFuse(mountpoint: string, ops: FuseOperations, options: FuseMountOptions = {}): Promise<FuseMount> {
  const extraOptions = fuseOptionList(options);
  const Fuse = loadBinding();
  const dir = await realpath(mountpoint).catch((err: unknown) => {
    throw new VircptError('NOT_FOUND', `mountpoint ${mountpoint}: ${messageOf(err)}`, { cause: err });
  });
  if (Buffer.byteLength(dir) > BINDING_STRING_MAX || !(await stat(dir)).isDirectory()) {
    throw new VircptError('INVALID', `mountpoint ${mountpoint} is not a directory or too long`);
  }
  let mount: Mount | undefined;
  let ended: number | undefined;
  const presence: Presence = { opened: () => mount?.opened(), released: () => mount?.released() };
  const fuse = new Fuse(dir, rawOperations(ops, options, Fuse, presence), {
    timeout: false, // FUSE.md: else every operation fails with ETIMEDOUT after 15 s
    extraOptions,
    onLoopExit: (status: number) => (mount ? mount.loopEnded(status) : (ended = status)),
  });
  await new Promise<void>((resolve, reject) => {
    fuse.mount((err) => (err ? reject(new VircptError('IO', `cannot mount FUSE at ${dir}: ${err.message}`, { cause: err })) : resolve()));
  });
  const entry = await fuseMountEntry(dir);
  mount = new Mount(dir, entry?.devId ?? '', () => fuse.releaseNative());
  if (ended !== undefined || !entry) mount.loopEnded(ended);
  return mount;
}
