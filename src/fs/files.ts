// The filesystem's operations, independent of the FUSE binding: the tree from the catalog
// (never starting an export), opens that lease the domain's export, reads through the block
// cache, and dirty maps generated at open.
import { constants as C } from 'node:fs';
import { ZeroMap, type BlockCache, type Reader } from '../cache/index.js';
import { VircptError } from '../errors.js';
import { renderDirtyMap } from '../exports/dirty-map.js';
import type { ExportManager, Lease } from '../exports/manager.js';
import type { NbdDisk } from '../exports/nbd-disk.js';
import type { Logger } from '../log.js';
import { checkpointDisks, type Catalog } from './catalog.js';
import type { FuseContext, FuseOpenResult, FuseOperations, FuseStat, FuseStatfs } from './fuse/index.js';
import type { PageCachePolicy } from './options.js';
import { DIRTY_MAP, diskFileName, NAME_MAX, parsePath, type Node } from './tree.js';

/** Base modes, before the mount's umask: read-only files and directories. */
const DIR_BASE = 0o555;
const FILE_BASE = 0o444;
/** statvfs(3) f_flag: read-only, no setuid. */
const ST_RDONLY = 1;
const ST_NOSUID = 2;
const MAX_HANDLES = 0xffff_ffff;
/** lseek(2) whences the kernel passes on (linux/fs.h); it answers SEEK_SET/CUR/END itself. */
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

type Handle =
  | { kind: 'disk'; path: string; lease: Lease; disk: NbdDisk; reader: Reader; readFrom: boolean }
  | { kind: 'map'; path: string; lease: Lease; data: Buffer };

export interface FilesOptions {
  catalog: Catalog;
  manager: ExportManager;
  cache: BlockCache;
  log: Logger;
  /** Owner and group of every file and directory. */
  uid: number;
  gid: number;
  /** Mode bits taken away from 0444 / 0555; the kernel enforces the result (default_permissions). */
  umask: number;
  /** When disk files use the kernel's page cache (options.ts PageCachePolicy); default always. */
  pageCache?: PageCachePolicy;
  /** The mount's own time, for the root. */
  mountedAt: Date;
}

export class Files implements FuseOperations {
  readonly #o: FilesOptions;
  readonly #handles = new Map<number, Handle>();
  /** Size of each dirty map last generated, per path and export, so stat shows it while it holds. */
  readonly #mapSizes = new Map<string, { startedAt: number; size: number }>();
  /** Per disk file: the export (source id) its pages in the kernel's cache were read from. */
  readonly #pagesFrom = new Map<string, string>();
  /** Per disk file: the export an open that read from it was closed on (page_cache=auto). */
  readonly #readThrough = new Map<string, string>();
  #nextFh = 1;
  readonly #dirMode: number;
  readonly #fileMode: number;

  constructor(opts: FilesOptions) {
    this.#o = opts;
    this.#dirMode = C.S_IFDIR | (DIR_BASE & ~opts.umask);
    this.#fileMode = C.S_IFREG | (FILE_BASE & ~opts.umask);
  }

  get openCount(): number {
    return this.#handles.size;
  }

  #stat(mode: number, size: number, mtime: Date, blocks?: number): FuseStat {
    const s: FuseStat = { mode, size, mtime, atime: mtime, ctime: mtime, uid: this.#o.uid, gid: this.#o.gid, nlink: mode === this.#dirMode ? 2 : 1 };
    if (blocks !== undefined) s.blocks = blocks;
    return s;
  }

  /** A file's time: its export's start while one is up, else the checkpoint's creation. */
  #fileTime(domain: string, creation: number): Date {
    return this.#o.manager.peek(domain)?.startedAt ?? new Date(creation * 1000);
  }

  async getattr(path: string, _ctx?: FuseContext): Promise<FuseStat> {
    try {
      return await this.#treeAttr(path);
    } catch (err) {
      // A file still open when its checkpoint or domain left the tree (deleted, undefined) keeps
      // its attributes: the kernel asks for them before it reads, and reads go on at the export's
      // point in time (EIO once the export is gone). A new open asks the tree only: ENOENT.
      const gone = err instanceof VircptError && ['NOT_FOUND', 'DOMAIN_NOT_FOUND', 'CHECKPOINT_NOT_FOUND'].includes(err.code);
      const held = gone ? this.#heldAttr(path) : undefined;
      if (held) return held;
      throw err;
    }
  }

  /** The attributes of a file open at `path`, from its handle. */
  #heldAttr(path: string): FuseStat | undefined {
    for (const h of this.#handles.values()) {
      if (h.path !== path) continue;
      const size = h.kind === 'disk' ? h.disk.size : h.data.length;
      const s = this.#stat(this.#fileMode, size, h.lease.export.startedAt, Math.ceil(size / 512));
      if (h.kind === 'disk') s.blksize = this.#o.cache.blockSize;
      return s;
    }
    return undefined;
  }

  async #treeAttr(path: string): Promise<FuseStat> {
    const node = parse(path);
    const { catalog } = this.#o;
    switch (node.kind) {
      case 'root':
        return this.#stat(this.#dirMode, 0, this.#o.mountedAt);
      case 'domain': {
        const e = await catalog.domain(node.domain);
        const latest = Math.max(0, ...e.checkpoints.map((c) => c.creationTime));
        return this.#stat(this.#dirMode, 0, latest ? new Date(latest * 1000) : this.#o.mountedAt);
      }
      case 'checkpoint': {
        const { checkpoint } = await catalog.checkpoint(node.domain, node.checkpoint);
        return this.#stat(this.#dirMode, 0, new Date(checkpoint.creationTime * 1000));
      }
      case 'disk': {
        const { entry, checkpoint } = await catalog.checkpoint(node.domain, node.checkpoint);
        const info = entry.sizes.get(node.target);
        if (!info || !checkpointDisks(checkpoint).includes(node.target)) throw notFound(path);
        const blocks = Math.ceil(Math.min(info.allocation, info.capacity) / 512);
        const s = this.#stat(this.#fileMode, info.capacity, this.#fileTime(node.domain, checkpoint.creationTime), blocks);
        // The preferred I/O size: one cache block. cat, cp and rsync read st_blksize at a time
        // (coreutils: at least 128 KiB), so a block takes one read(2) instead of eight.
        s.blksize = this.#o.cache.blockSize;
        return s;
      }
      case 'map': {
        const { checkpoint } = await catalog.checkpoint(node.domain, node.checkpoint);
        const mtime = this.#fileTime(node.domain, checkpoint.creationTime);
        const known = this.#mapSizes.get(path);
        // Unknown until generated (at open, with direct_io): 0 here, read to EOF anyway.
        const size = known && known.startedAt === mtime.getTime() ? known.size : 0;
        return this.#stat(this.#fileMode, size, mtime, Math.ceil(size / 512));
      }
      default:
        throw notFound(path);
    }
  }

  async readdir(path: string, _ctx?: FuseContext): Promise<string[]> {
    const node = parse(path);
    const { catalog } = this.#o;
    switch (node.kind) {
      case 'root':
        return catalog.domains();
      case 'domain':
        return (await catalog.domain(node.domain)).checkpoints.map((c) => c.name);
      case 'checkpoint': {
        const { checkpoint } = await catalog.checkpoint(node.domain, node.checkpoint);
        return [...checkpointDisks(checkpoint).map(diskFileName), DIRTY_MAP];
      }
      case 'none':
        throw notFound(path);
      default:
        throw new VircptError('INVALID', `${path} is not a directory`);
    }
  }

  /** The open that starts an export: the kernel let it through (modes), `ctx` says who it was. */
  async open(path: string, flags: number, ctx?: FuseContext): Promise<FuseOpenResult> {
    if ((flags & 3) !== C.O_RDONLY || flags & C.O_TRUNC) throw new VircptError('READ_ONLY', `${path}: read-only filesystem`);
    const node = parse(path);
    if (node.kind !== 'disk' && node.kind !== 'map') {
      if (node.kind === 'none') throw notFound(path);
      return { fh: 0 }; // directories
    }
    await this.#treeAttr(path); // ENOENT before starting anything
    const lease = await this.#o.manager.acquire(node.domain, node.checkpoint, ctx ? { uid: ctx.uid, pid: ctx.pid } : undefined);
    try {
      const exp = lease.export;
      if (node.kind === 'disk') {
        if (!exp.hasDisk(node.target)) {
          throw new VircptError('BUSY', `${path}: the running export of ${node.domain} does not include disk ${node.target}`);
        }
        const disk = await exp.disk(node.target);
        // The kernel may keep this file's cached pages only if they come from this same export:
        // decided here, per open, rather than by libfuse's auto_cache, whose mtime check is
        // skipped for attr_timeout after the last getattr and then keeps an older export's pages.
        const keepCache = this.#pagesFrom.get(path) === disk.id;
        this.#pagesFrom.set(path, disk.id);
        const reader = this.#o.cache.reader(disk);
        return { fh: this.#add({ kind: 'disk', path, lease, disk, reader, readFrom: false }), keepCache, directIo: this.#directIo(path, disk) };
      }
      const { checkpoint } = await this.#o.catalog.checkpoint(node.domain, node.checkpoint);
      const data = renderDirtyMap(await exp.dirtyMap(node.checkpoint, checkpointDisks(checkpoint)));
      this.#mapSizes.set(path, { startedAt: exp.startedAt.getTime(), size: data.length });
      return { fh: this.#add({ kind: 'map', path, lease, data }), directIo: true };
    } catch (err) {
      lease.release();
      if (err instanceof VircptError && err.code === 'BUSY') this.#o.log.warn({ path }, err.message);
      throw err;
    }
  }

  /**
   * Whether this open of a disk file goes past the page cache. auto: a first pass (cp, rsync, a
   * scan, a loop device, which caches above us anyway) costs the kernel a fresh page per 4 KiB
   * and leaves pages nobody reads again; a reader that comes back to a file of the same export
   * gets the page cache, and the passes after it are served from memory.
   */
  #directIo(path: string, disk: NbdDisk): boolean {
    switch (this.#o.pageCache ?? 'always') {
      case 'always': return false;
      case 'never': return true;
      case 'auto': return this.#readThrough.get(path) !== disk.id;
    }
  }

  #add(h: Handle): number {
    while (this.#handles.has(this.#nextFh) || this.#nextFh === 0) this.#nextFh = (this.#nextFh % MAX_HANDLES) + 1;
    const fh = this.#nextFh++;
    this.#handles.set(fh, h);
    return fh;
  }

  /** The open file `fh`, if it can still be read. */
  #live(path: string, fh: number): Handle {
    const h = this.#handles.get(fh);
    // Only releaseAll (unmount) drops a handle the kernel still holds: its export is gone.
    if (!h) throw new VircptError('NBD_CLOSED', `${path}: released (the filesystem is unmounting)`);
    // docs/design.md ("Hang a reader"): once the export went away (VM destroyed, job aborted) every read fails, also
    // those the block cache could answer, until the file is opened again on a new export.
    if (h.kind === 'disk' && h.disk.dead) throw new VircptError('NBD_CLOSED', `${path}: the export of this file went away; open it again`);
    return h;
  }

  async read(path: string, fh: number, buf: Buffer, length: number, position: number): Promise<number> {
    const h = this.#live(path, fh);
    if (h.kind === 'map') {
      if (position >= h.data.length) return 0;
      return h.data.copy(buf, 0, position, Math.min(h.data.length, position + length));
    }
    h.readFrom = true;
    return h.reader.read(position, length, buf);
  }

  /**
   * SEEK_DATA / SEEK_HOLE: a disk file's holes are the ranges base:allocation says read as
   * zeros (the block cache's zero map, asked once per export), so `cp`, `qemu-img convert` and
   * `tar --sparse` skip them without reading; a dirty map is all data.
   */
  async lseek(path: string, fh: number, offset: number, whence: number): Promise<number> {
    const h = this.#live(path, fh);
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) throw new VircptError('INVALID', `${path}: lseek whence ${whence}`);
    const size = h.kind === 'map' ? h.data.length : h.disk.size;
    const zeros = h.kind === 'map' ? ZeroMap.EMPTY : await this.#o.cache.zeroMap(h.disk);
    const at = whence === SEEK_DATA ? zeros.nextData(offset, size) : zeros.nextHole(offset, size);
    if (at < 0) throw new VircptError('NO_DATA', `${path}: no ${whence === SEEK_DATA ? 'data' : 'hole'} at or after ${offset}`);
    return at;
  }

  /** Nothing to count: no space, no inodes, and read-only (the kernel also says so, from the mount). */
  async statfs(_path: string): Promise<FuseStatfs> {
    return {
      bsize: this.#o.cache.blockSize, frsize: this.#o.cache.blockSize, blocks: 0, bfree: 0, bavail: 0,
      files: 0, ffree: 0, favail: 0, fsid: 0, flag: ST_RDONLY | ST_NOSUID, namemax: NAME_MAX,
    };
  }

  async release(_path: string, fh: number): Promise<void> {
    const h = this.#handles.get(fh);
    if (!h) return;
    this.#handles.delete(fh);
    if (h.kind === 'disk') {
      if (h.readFrom) this.#readThrough.set(h.path, h.disk.id);
      await h.reader.close();
    }
    h.lease.release();
  }

  /** Closes every handle still open (unmount). */
  async releaseAll(): Promise<void> {
    await Promise.all([...this.#handles.keys()].map((fh) => this.release('', fh)));
  }
}

function parse(path: string): Node {
  const node = parsePath(path);
  if (node.kind === 'too-long') throw new VircptError('NAME_TOO_LONG', `${path}: a name longer than ${NAME_MAX} bytes`);
  return node;
}

function notFound(path: string): VircptError {
  return new VircptError('NOT_FOUND', `${path}: no such file or directory`);
}
