// The file system under bench/fuse-floor.ts: one 4 GiB file whose reads are answered from a
// 1 MiB pattern in memory, mounted through src/fs/fuse/ (the addon) with vircptfs's options
// (src/fs/mount.ts) and per-open keepCache false: no block cache, no NBD, only the binding.
// Run by fork(): `node fuse-floor-fs.js MOUNTPOINT [LIBFUSE-OPTION...]`; over IPC it says
// { ready } once mounted, answers 'count' with { reads, bytes, handles } and unmounts on 'stop', on
// SIGINT/SIGTERM or when the bench goes away. `handles`: its libuv handles (the old libfuse 2
// binding leaked one per libfuse worker thread; this watches that none grow).
import { constants as C } from 'node:fs';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { mountFuse, type FuseOperations, type FuseStat } from '../src/fs/fuse/index.js';
import { countLibuvHandles } from '../test/fs/scratch-mount.js';

const MiB = 1024 * 1024;
export const FILE_NAME = 'disk.raw';
export const FILE_SIZE = 4 * 1024 * MiB;
export const DIRECT_IO = '--direct-io';
/** Never zero, and 251 is prime: no two 4 KiB pages of a MiB are alike. */
const PATTERN = Buffer.from(Array.from({ length: MiB }, (_, i) => (i % 251) + 1));
const MTIME = new Date('2025-01-01T00:00:00Z');

/** Copies the file's bytes [position, position + length) into buf; returns the count. */
export function fillPattern(buf: Buffer, length: number, position: number): number {
  const n = Math.max(0, Math.min(length, FILE_SIZE - position));
  for (let done = 0; done < n;) {
    const at = (position + done) % MiB;
    done += PATTERN.copy(buf, done, at, Math.min(MiB, at + n - done));
  }
  return n;
}

class NotFound extends Error {}

/** `--direct-io` among the options: reads bypass the page cache (per-open direct_io). */
async function serve(mountpoint: string, options: string[]): Promise<void> {
  const directIo = options.includes(DIRECT_IO);
  const extraOptions = options.filter((o) => o !== DIRECT_IO);
  let reads = 0;
  let bytes = 0;
  const stat = (mode: number, size: number): FuseStat => ({ mode, size, mtime: MTIME, blocks: Math.ceil(size / 512) });
  const ops: FuseOperations = {
    getattr: async (path) => {
      if (path === '/') return stat(C.S_IFDIR | 0o555, 0);
      if (path === `/${FILE_NAME}`) return stat(C.S_IFREG | 0o444, FILE_SIZE);
      throw new NotFound(path);
    },
    readdir: async () => [FILE_NAME],
    open: async () => ({ fh: 1, keepCache: false, directIo }),
    read: async (_path, _fh, buf, length, position) => {
      const n = fillPattern(buf, length, position);
      reads++;
      bytes += n;
      return n;
    },
  };
  const mount = await mountFuse(mountpoint, ops, {
    fsname: 'fuse-floor', subtype: 'vircptfs', readOnly: true, attrTimeout: 1, entryTimeout: 1, extraOptions,
    toErrno: (err) => (err instanceof NotFound ? constants.errno.ENOENT : constants.errno.EIO),
  });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    void mount.unmount().finally(() => process.exit(0));
  };
  process.on('message', (m) => (m === 'count' ? process.send?.({ reads, bytes, handles: countLibuvHandles() }) : m === 'stop' && stop()));
  process.on('disconnect', stop);
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.send?.({ ready: true });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [mountpoint, ...extra] = process.argv.slice(2);
  await serve(mountpoint!, extra).catch((err: unknown) => {
    process.send?.({ error: err instanceof Error ? err.message : String(err) });
    process.exit(1);
  });
}
