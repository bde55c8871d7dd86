// The fetch of one block: straight into a buffer of its own (recycled when the pool has one),
// in source reads of at most maxRequest bytes, all in flight. Blocks are not read as one run
// and copied out: the NBD client splits reads at its request size anyway, so one read per
// block costs the same requests, without the second buffer and the copy.
import type { BufferPool } from './buffer-pool.js';
import type { Block, BlockSource, CacheStats } from './types.js';

export interface FetchOptions {
  source: BlockSource;
  blockSize: number;
  /** Largest single source read. */
  maxRequest: number;
  /** Blocks made by read-ahead are marked, to count prefetch hits. */
  prefetch: boolean;
  stats: CacheStats;
  pool: BufferPool;
}

/** Reads block `index` (clipped at the source's end). */
export async function fetchBlock(opts: FetchOptions, index: number): Promise<Block> {
  const { source, blockSize, pool } = opts;
  const start = index * blockSize;
  const length = Math.min(blockSize, source.size - start);
  // A short last block gets a buffer of its exact size (never pooled: see buffer-pool.ts).
  const data = length === pool.size ? pool.take() : Buffer.allocUnsafeSlow(length);
  // On failure `data` is just dropped, never given to the pool.
  await readPieces(opts, start, data);
  return { data, prefetched: opts.prefetch };
}

/** Fills `into` from `offset` with source reads of at most maxRequest bytes, all in flight. */
async function readPieces(opts: FetchOptions, offset: number, into: Buffer): Promise<void> {
  const { source, maxRequest, stats } = opts;
  // No signal: this read is shared by every reader of the block (STYLE.md habit 4); the
  // source enforces its own deadline.
  if (into.length <= maxRequest) {
    stats.sourceReads++;
    await source.read(offset, into.length, into);
  } else {
    const pieces: Promise<void>[] = [];
    for (let pos = 0; pos < into.length; pos += maxRequest) {
      const len = Math.min(maxRequest, into.length - pos);
      stats.sourceReads++;
      pieces.push(source.read(offset + pos, len, into.subarray(pos, pos + len)));
    }
    await Promise.all(pieces);
  }
  stats.bytesFetched += into.length;
}
