// Answers the requests the addon hands over: the inode table turns them into path-based calls
// of FuseOperations, and every request is answered exactly once, never with a throw into C
// (an unanswered request blocks its caller for good).
import { constants } from 'node:os';
import { Attr, OPEN_DIRECT_IO, OPEN_KEEP_CACHE, Op, type Addon, type Session } from './native.js';
import { Inodes, childPath, parentPath } from './inodes.js';
import type { FuseContext, FuseMountOptions, FuseOpenResult, FuseOperations, FuseStat, FuseStatfs } from './types.js';

const { EIO, EINTR, ENOENT, ENAMETOOLONG, ENOTDIR } = constants.errno;
const S_IFDIR = 0o040000;
/** The longest name a directory entry may have (NAME_MAX); FUSE forwards up to 1024 bytes. */
const NAME_MAX = 255;
const DEFAULT_STATFS: FuseStatfs = {
  bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: NAME_MAX,
};
/** Read buffers kept for reuse (each up to the largest request, 1 MiB). */
const POOLED_BUFFERS = 16;
/** Replies from this size on are written by the addon's writer threads (native/writers.h): the
 *  kernel's copy of them then runs beside the JavaScript thread. */
const WRITER_MIN_BYTES = 64 * 1024;

interface Dir { names: string[]; inodes: number[]; modes: number[] }

/** What the mount needs to hear from the server. */
export interface ServerEvents {
  initialized(): void;
  opened(): void;
  released(): void;
}

export class Server {
  session: Session | undefined;
  readonly #addon: Addon;
  readonly #ops: FuseOperations;
  readonly #o: FuseMountOptions;
  readonly #events: ServerEvents;
  readonly #inodes = new Inodes();
  readonly #dirs = new Map<number, Dir>();
  readonly #reads = new Map<number, ReadContext>();
  readonly #attr = new Float64Array(Attr.Fields);
  readonly #pool: Buffer[] = [];
  /** Buffers of replies handed to the addon's writer threads, by token. */
  readonly #writing = new Map<number, Buffer>();
  readonly #tokens = new Float64Array(64);
  #lastToken = 0;
  #nextDir = 1;

  constructor(addon: Addon, ops: FuseOperations, options: FuseMountOptions, events: ServerEvents) {
    this.#addon = addon;
    this.#ops = ops;
    this.#o = options;
    this.#events = events;
  }

  get inodeCount(): number {
    return this.#inodes.size;
  }

  /** The addon's entry point: (op, slot, ino, a, b, c, name, uid, gid, pid). */
  readonly dispatch = (op: Op, slot: number, ino: number, a: number, b: number, c: number,
    name: string | undefined, uid: number, gid: number, pid: number): void => {
    const ctx: FuseContext = { uid, gid, pid };
    switch (op) {
      case Op.Init: return this.#events.initialized();
      case Op.Forget: return this.#inodes.forget(ino, a);
      case Op.Interrupt: return this.#interrupt(slot);
      case Op.Readdir: return this.#readdir(slot, a, b, c);
      case Op.Releasedir:
        this.#dirs.delete(a);
        this.#addon.replyErr(this.#s, slot, 0);
        return;
      default:
    }
    const path = this.#inodes.path(ino);
    if (path === undefined) return void this.#addon.replyErr(this.#s, slot, ENOENT);
    switch (op) {
      case Op.Lookup: return this.#lookup(slot, path, name ?? '', ctx);
      case Op.Getattr: return this.#run(slot, () => this.#ops.getattr(path, ctx), (st) => this.#replyAttr(slot, ino, st));
      case Op.Opendir: return this.#opendir(slot, path, ino, ctx);
      case Op.Open: return this.#open(slot, path, a, ctx);
      case Op.Read: return this.#read(slot, path, a, b, c, ctx);
      case Op.Release:
        this.#events.released(); // the kernel sends exactly one release per successful open
        return this.#run(slot, async () => this.#ops.release?.(path, a), () => this.#addon.replyErr(this.#s, slot, 0));
      case Op.Statfs:
        return this.#run(slot, async () => (await this.#ops.statfs?.(path, ctx)) ?? DEFAULT_STATFS, (f) => this.#replyStatfs(slot, f));
      case Op.Lseek: return this.#lseek(slot, path, a, b, c, ctx);
      default: this.#addon.replyErr(this.#s, slot, EIO);
    }
  };

  get #s(): Session {
    return this.session!;
  }

  /** Runs work and answers the request with reply(value), or with the errno of its failure. */
  #run<T>(slot: number, work: () => Promise<T>, reply: (value: T) => void): void {
    const fail = (err: unknown) => { this.#addon.replyErr(this.#s, slot, this.#errno(err)); };
    let p: Promise<T>;
    try { p = work(); } catch (err) { p = Promise.reject(err); }
    p.then((value) => { try { reply(value); } catch (err) { fail(err); } }, fail);
  }

  #errno(err: unknown): number {
    let n = EIO;
    try { n = this.#o.toErrno?.(err) ?? EIO; } catch { /* EIO */ }
    return Number.isInteger(n) && n > 0 && n < 4096 ? n : EIO;
  }

  #lookup(slot: number, dir: string, name: string, ctx: FuseContext): void {
    if (Buffer.byteLength(name) > NAME_MAX) return void this.#addon.replyErr(this.#s, slot, ENAMETOOLONG);
    const path = childPath(dir, name);
    this.#run(slot, () => this.#ops.getattr(path, ctx), (st) => {
      const ino = this.#inodes.lookup(path);
      this.#fillAttr(ino, st);
      // Not delivered (the session ended meanwhile): the kernel will never forget it.
      if (!this.#addon.replyEntry(this.#s, slot, this.#attr)) this.#inodes.forget(ino, 1);
    });
  }

  #fillAttr(ino: number, st: FuseStat): void {
    const a = this.#attr;
    const u = (v: number | undefined, d: number) => (Number.isSafeInteger(v) && v! >= 0 ? v! : d);
    const ms = (t: number | Date | undefined, d: number) => {
      const v = t instanceof Date ? t.getTime() : t ?? d;
      return Number.isFinite(v) && v >= 0 ? v : d;
    };
    const mtime = ms(st.mtime, 0);
    a[Attr.Ino] = ino;
    a[Attr.Mode] = u(st.mode, 0);
    a[Attr.Nlink] = u(st.nlink, 1);
    a[Attr.Uid] = u(st.uid, 0);
    a[Attr.Gid] = u(st.gid, 0);
    a[Attr.Size] = u(st.size, 0);
    a[Attr.Blocks] = u(st.blocks, 0);
    a[Attr.Blksize] = u(st.blksize, 0);
    a[Attr.Atime] = ms(st.atime, mtime);
    a[Attr.Mtime] = mtime;
    a[Attr.Ctime] = ms(st.ctime, mtime);
    a[Attr.AttrTimeout] = this.#o.attrTimeout ?? 1;
    a[Attr.EntryTimeout] = this.#o.entryTimeout ?? 1;
  }

  #replyAttr(slot: number, ino: number, st: FuseStat): void {
    this.#fillAttr(ino, st);
    this.#addon.replyAttr(this.#s, slot, this.#attr);
  }

  #replyStatfs(slot: number, f: FuseStatfs): void {
    const fields = [f.bsize, f.frsize, f.blocks, f.bfree, f.bavail, f.files, f.ffree, f.favail, f.fsid, f.flag, f.namemax];
    this.#addon.replyStatfs(this.#s, slot, Float64Array.from(fields, (v) => (Number.isFinite(v) && v >= 0 ? v : 0)));
  }

  #opendir(slot: number, path: string, ino: number, ctx: FuseContext): void {
    const readdir = this.#ops.readdir;
    if (!readdir) return void this.#addon.replyErr(this.#s, slot, ENOTDIR);
    this.#run(slot, () => readdir.call(this.#ops, path, ctx), (listed) => {
      const names = listed.filter((n) => n.length > 0 && !n.includes('/') && n !== '.' && n !== '..' && Buffer.byteLength(n) <= NAME_MAX);
      const dir: Dir = {
        names: ['.', '..', ...names],
        inodes: [ino, this.#inodes.peek(parentPath(path)), ...names.map((n) => this.#inodes.peek(childPath(path, n)))],
        modes: [S_IFDIR, S_IFDIR, ...names.map(() => 0)], // 0: DT_UNKNOWN, the reader asks when it cares
      };
      const fh = this.#nextDir++;
      this.#dirs.set(fh, dir);
      if (!this.#addon.replyOpen(this.#s, slot, fh, 0)) this.#dirs.delete(fh);
    });
  }

  #readdir(slot: number, fh: number, offset: number, size: number): void {
    const dir = this.#dirs.get(fh);
    if (!dir) return void this.#addon.replyErr(this.#s, slot, EIO);
    this.#addon.replyDirents(this.#s, slot, dir.names, dir.inodes, dir.modes, offset, size);
  }

  #open(slot: number, path: string, flags: number, ctx: FuseContext): void {
    const open = this.#ops.open;
    this.#run(slot, async (): Promise<FuseOpenResult> => (open ? open.call(this.#ops, path, flags, ctx) : { fh: 0 }), (r) => {
      if (!Number.isSafeInteger(r.fh) || r.fh < 0) throw new RangeError(`bad fh ${r.fh}`);
      const bits = (r.directIo ? OPEN_DIRECT_IO : 0) | (r.keepCache ? OPEN_KEEP_CACHE : 0);
      this.#events.opened();
      if (this.#addon.replyOpen(this.#s, slot, r.fh, bits)) return;
      // The kernel never got this open, so it will never release it.
      this.#events.released();
      void Promise.resolve(this.#ops.release?.(path, r.fh)).catch(() => {});
    });
  }

  #read(slot: number, path: string, fh: number, position: number, length: number, ctx: FuseContext): void {
    const read = this.#ops.read;
    if (!read) return void this.#addon.replyErr(this.#s, slot, EIO);
    const buf = this.#buffer(length);
    const rc = new ReadContext(ctx);
    this.#reads.set(slot, rc);
    let p: Promise<number>;
    try { p = read.call(this.#ops, path, fh, buf, length, position, rc); } catch (err) { p = Promise.reject(err); }
    let writing = false;
    p.then((n) => {
      if (!Number.isInteger(n) || n < 0 || n > length) throw new RangeError(`read returned ${n} of ${length}`);
      // Small replies, and the only read in flight (one reader waiting on it: a direct_io pass
      // with cp's 128 KiB reads), are written here: a writer thread would only add a wake-up.
      if (n < WRITER_MIN_BYTES || (this.#reads.size === 1 && this.#writing.size === 0)) return void this.#addon.replyBuf(this.#s, slot, buf, n);
      // A writer thread copies it to the kernel; the buffer stays untouched until it is done.
      const token = ++this.#lastToken;
      writing = this.#addon.replyBufLater(this.#s, slot, buf, n, token);
      if (writing) this.#writing.set(token, buf);
    }).catch((err: unknown) => {
      this.#addon.replyErr(this.#s, slot, this.#errno(err));
    }).finally(() => {
      // Only now may the buffer serve another read: an interrupted read may still be filling it.
      if (this.#reads.get(slot) === rc) this.#reads.delete(slot);
      if (!writing) this.#recycle(buf);
    });
  }

  /** Takes back the buffers of replies the writer threads have written since the last look. */
  #collectWritten(): void {
    if (this.#writing.size === 0) return;
    const n = this.#addon.written(this.#s, this.#tokens);
    for (let i = 0; i < n; i++) {
      const buf = this.#writing.get(this.#tokens[i]!);
      if (!buf) continue;
      this.#writing.delete(this.#tokens[i]!);
      this.#recycle(buf);
    }
  }

  #recycle(buf: Buffer): void {
    if (this.#pool.length < POOLED_BUFFERS) this.#pool.push(buf);
  }

  /** A buffer of at least `length` bytes, as a view of exactly `length`. */
  #buffer(length: number): Buffer {
    this.#collectWritten();
    const i = this.#pool.findIndex((b) => b.buffer.byteLength >= length);
    const buf = i >= 0 ? this.#pool.splice(i, 1)[0]! : Buffer.allocUnsafeSlow(Math.max(length, 128 * 1024));
    return Buffer.from(buf.buffer, buf.byteOffset, length);
  }

  /** FUSE_INTERRUPT: the reader got a signal. Its read is answered EINTR at once. */
  #interrupt(slot: number): void {
    const rc = this.#reads.get(slot);
    if (!rc) return;
    this.#reads.delete(slot);
    rc.abort();
    this.#addon.replyErr(this.#s, slot, EINTR);
  }

  #lseek(slot: number, path: string, fh: number, offset: number, whence: number, ctx: FuseContext): void {
    const lseek = this.#ops.lseek;
    if (!lseek) return void this.#addon.replyErr(this.#s, slot, constants.errno.ENOSYS);
    this.#run(slot, () => lseek.call(this.#ops, path, fh, offset, whence, ctx), (pos) => {
      if (!Number.isSafeInteger(pos) || pos < 0) throw new RangeError(`lseek returned ${pos}`);
      this.#addon.replyLseek(this.#s, slot, pos);
    });
  }
}

/** A read's context: its AbortSignal is made only when asked for or when the read is
 *  interrupted (an AbortController per 128 KiB request costs more than the rest of the dispatch). */
class ReadContext implements FuseContext {
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  #abort: AbortController | undefined;

  constructor(ctx: FuseContext) {
    this.uid = ctx.uid;
    this.gid = ctx.gid;
    this.pid = ctx.pid;
  }

  get signal(): AbortSignal {
    return (this.#abort ??= new AbortController()).signal;
  }

  abort(): void {
    (this.#abort ??= new AbortController()).abort(new Error('the reader was interrupted'));
  }
}
