// The addon (native/session.c), loaded once, with its JavaScript-side shapes.
import { createRequire } from 'node:module';
import { VircptError, messageOf } from '../../errors.js';

/** The operations the addon hands over (the first argument of the dispatch function). */
export const enum Op {
  Init = 0, Lookup, Forget, Getattr, Opendir, Readdir, Releasedir, Open, Read, Release, Statfs, Lseek, Interrupt,
}

/** Indexes of the Float64Array the attribute replies read (native/replies.c, enum attr_field). */
export const enum Attr {
  Ino = 0, Mode, Nlink, Uid, Gid, Size, Blocks, Blksize, Atime, Mtime, Ctime, AttrTimeout, EntryTimeout, Fields,
}

export const OPEN_DIRECT_IO = 1;
export const OPEN_KEEP_CACHE = 2;

declare const sessionBrand: unique symbol;
export type Session = { readonly [sessionBrand]: true };

/** (op, slot, ino, a, b, c, name, uid, gid, pid): what a, b and c mean depends on op. */
export type Dispatch = (op: Op, slot: number, ino: number, a: number, b: number, c: number,
  name: string | undefined, uid: number, gid: number, pid: number) => void;

export interface Addon {
  mount(mountpoint: string, args: string[], dispatch: Dispatch, onEnd: (status: number) => void, stallMs: number): Session;
  detach(s: Session): void;
  stop(s: Session): void;
  destroy(s: Session): void;
  fd(s: Session): number;
  pending(s: Session): number;
  deadlocksAvoided(s: Session): number;
  /** Tokens of replyBufLater replies written since the last call, into out; how many. */
  written(s: Session, out: Float64Array): number;
  // Each returns false when the request was answered already (or the session ended).
  replyErr(s: Session, slot: number, errno: number): boolean;
  replyEntry(s: Session, slot: number, attr: Float64Array): boolean;
  replyAttr(s: Session, slot: number, attr: Float64Array): boolean;
  replyOpen(s: Session, slot: number, fh: number, flags: number): boolean;
  replyBuf(s: Session, slot: number, data: Uint8Array, length: number): boolean;
  /** Written by a writer thread; true: data stays untouched until written() lists token. */
  replyBufLater(s: Session, slot: number, data: Uint8Array, length: number, token: number): boolean;
  replyDirents(s: Session, slot: number, names: string[], inodes: number[], modes: number[], offset: number, size: number): boolean;
  replyStatfs(s: Session, slot: number, fields: Float64Array): boolean;
  replyLseek(s: Session, slot: number, offset: number): boolean;
}

let addon: Addon | undefined;

/** From dist/src/fs/fuse/ and src/fs/fuse/ alike: the package root is four levels up. */
const ADDON_PATH = '../../../../native/build/Release/vircptfs_fuse.node';

export function loadAddon(): Addon {
  if (addon) return addon;
  try {
    addon = createRequire(import.meta.url)(ADDON_PATH) as Addon;
  } catch (err) {
    throw new VircptError('UNSUPPORTED',
      `cannot load the FUSE addon: ${messageOf(err)} (build it: node native/build.mjs; Debian: libfuse3-3, fuse3)`, { cause: err });
  }
  return addon;
}
