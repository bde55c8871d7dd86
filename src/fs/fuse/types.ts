// What the filesystem implements and what a mount offers, independent of the addon.

export interface FuseStat {
  mode: number;
  size: number;
  /** Milliseconds since the epoch, or a Date; atime and ctime default to mtime. */
  mtime: number | Date;
  atime?: number | Date;
  ctime?: number | Date;
  uid?: number; gid?: number; nlink?: number; blksize?: number;
  /** 512-byte blocks really used: `du` and `cp --sparse=auto` read it. */
  blocks?: number;
}

export interface FuseStatfs {
  bsize: number; frsize: number; blocks: number; bfree: number; bavail: number;
  files: number; ffree: number; favail: number; fsid: number; flag: number; namemax: number;
}

export interface FuseOpenResult {
  /** Handle passed back to read, lseek and release; 0 means none. */
  fh: number;
  /** Bypass the page cache for this open: reads go on until the filesystem returns 0 bytes,
   *  whatever getattr said the size was. Breaks shared mmap. */
  directIo?: boolean;
  /** Keep the pages cached by earlier opens of this file. */
  keepCache?: boolean;
}

/** Who asked: the FUSE request's caller (its thread id as pid, as the kernel sends it). */
export interface FuseContext {
  uid: number;
  gid: number;
  pid: number;
  /** Reads only: aborted when the reader is interrupted (FUSE_INTERRUPT); the read has been
   *  answered with EINTR by then, so whatever it still does is thrown away. */
  signal?: AbortSignal;
}

/** Rejections are turned into errno by `options.toErrno` (EIO when absent or unknown). */
export interface FuseOperations {
  getattr(path: string, ctx: FuseContext): Promise<FuseStat>;
  readdir?(path: string, ctx: FuseContext): Promise<readonly string[]>;
  open?(path: string, flags: number, ctx: FuseContext): Promise<FuseOpenResult>;
  /** Copy at most `length` bytes into `buf` (valid only until the promise settles). */
  read?(path: string, fh: number, buf: Buffer, length: number, position: number, ctx: FuseContext): Promise<number>;
  release?(path: string, fh: number): Promise<void>;
  statfs?(path: string, ctx: FuseContext): Promise<FuseStatfs>;
  /** SEEK_DATA or SEEK_HOLE (the kernel answers the other whences itself): the new offset;
   *  reject with ENXIO past the end, or when SEEK_DATA finds no data after `offset`. */
  lseek?(path: string, fh: number, offset: number, whence: number, ctx: FuseContext): Promise<number>;
}

export interface FuseMountOptions {
  fsname?: string; subtype?: string;
  allowOther?: boolean; defaultPermissions?: boolean; readOnly?: boolean;
  /** Seconds the kernel may keep attributes and names (0: ask every time). Default 1. */
  attrTimeout?: number; entryTimeout?: number;
  /** Further -o options of libfuse 3's low-level session (`max_readahead=1048576`,
   *  `max_background=64`); checked against libfuse's list before mounting. */
  extraOptions?: readonly string[];
  /** A rejection of an operation -> positive errno; EIO when it throws or gives no errno. */
  toErrno?: (err: unknown) => number;
  /** Milliseconds requests may wait while the event loop does not come for them before the
   *  addon's watchdog answers them EDEADLK (a synchronous call of this process into its own
   *  mount would otherwise hang it for good). Default 5000; 0 turns the guard off. */
  deadlockGuardMs?: number;
}

export interface FuseLoopExit {
  /** The session's end: 0, or -errno of a failed read of /dev/fuse; undefined when the mount
   *  left this process's mount namespace while a copy in another one still held it. */
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
  /** Detaches (lazily, like umount -l), then waits for `exited`: files still open keep the
   *  mount serving until they are closed. Idempotent. */
  unmount(): Promise<void>;
  /** Requests handed to the filesystem and not answered yet. */
  readonly pending: number;
  /** Requests the deadlock guard answered with EDEADLK. */
  readonly deadlocksAvoided: number;
  [Symbol.asyncDispose](): Promise<void>;
}
