// The FUSE edge: the one module the rest of the program imports for it. The addon lives in
// native/ (libfuse 3's low-level API on Node's event loop); everything here is its JS side.
export { lazyUnmount, mountFuse } from './mount.js';
export { readMountinfo, setReadAhead, type MountinfoEntry } from './mountinfo.js';
export type {
  FuseContext, FuseLoopExit, FuseMount, FuseMountOptions, FuseOpenResult, FuseOperations, FuseStat, FuseStatfs,
} from './types.js';
