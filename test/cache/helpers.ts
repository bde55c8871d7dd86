// Shared set-up for the cache tests: a real file, a FileBlockSource over it, a cache.
import type { TestContext } from 'node:test';
import { BlockCache, type BlockCacheOptions, type BlockSource, type Extent } from '../../src/cache/index.js';
import { FileBlockSource, makeTestFile, type FileSourceOptions, type TestFile } from './file-source.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

export interface Setup {
  file: TestFile;
  src: FileBlockSource;
  cache: BlockCache;
}

export async function setup(
  t: TestContext,
  size: number,
  opts: { zeros?: Extent[]; source?: FileSourceOptions; cache?: BlockCacheOptions } = {},
): Promise<Setup> {
  const file = await makeTestFile(size, opts.zeros);
  t.after(file.cleanup);
  const src = await FileBlockSource.open(file.path, { zeroExtents: opts.zeros, ...opts.source });
  t.after(() => src.close());
  return { file, src, cache: new BlockCache(opts.cache) };
}

/** Reads through the cache into a fresh buffer and returns the bytes it copied. */
export async function readAt(
  cache: BlockCache,
  src: BlockSource,
  offset: number,
  length: number,
  signal?: AbortSignal,
): Promise<Buffer> {
  const into = Buffer.alloc(length);
  const n = await cache.read(src, offset, length, into, signal);
  return into.subarray(0, n);
}

/** The file's own bytes for [offset, offset + length), clipped at its end. */
export function expected(file: TestFile, offset: number, length: number): Buffer {
  return file.data.subarray(Math.min(offset, file.data.length), Math.min(offset + length, file.data.length));
}

/** Deterministic pseudo-random integers (xorshift), so a failure can be replayed. */
export function rng(seed: number): (below: number) => number {
  let x = seed >>> 0 || 1;
  return (below) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % below;
  };
}
