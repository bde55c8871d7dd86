// The fetch of one block: straight into a buffer of its own (recycled when the pool has one),
// in source reads of at most maxRequest bytes, all in flight; the parts of the block that the
// zero map knows to be zeros are filled here instead of read. Blocks are not read as one run
// and copied out: the NBD client splits reads at its request size anyway, so one read per
// block costs the same requests, without the second buffer and the copy.
import type { BufferPool } from './buffer-pool.js';
import type { Block, BlockSource, CacheStats } from './types.js';
import type { ZeroMap } from './zero-map.js';

/** Zero runs inside a block shorter than this are read anyway: a request costs more. */
const MIN_SKIPPED_ZEROS = 64 * 1024;

export interface FetchOptions {
  source: BlockSource;
  blockSize: number;
  /** Largest single source read. */
  maxRequest: number;
  /** Blocks made by read-ahead are marked, to count prefetch hits. */
  prefetch: boolean;
  stats: CacheStats;
  pool: BufferPool;
  /** The source's zero extents: the parts of a block inside them are filled here, not read. */
  zeros?: ZeroMap;
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

/** Fills `into` from `offset`: the data ranges with source reads of at most maxRequest bytes,
 *  all in flight; zero extents (of MIN_SKIPPED_ZEROS or more) with zeros. */
async function readPieces(opts: FetchOptions, offset: number, into: Buffer): Promise<void> {
  const { source, maxRequest, stats } = opts;
  const pieces: Promise<void>[] = [];
  let filled = offset; // everything before this is read or zero-filled
  // No signal: this read is shared by every reader of the block (docs/read-path.md); the
  // source enforces its own deadline.
  for (const [start, end] of dataRanges(opts.zeros, offset, offset + into.length)) {
    into.fill(0, filled - offset, start - offset);
    for (let pos = start; pos < end; pos += maxRequest) {
      const len = Math.min(maxRequest, end - pos);
      stats.sourceReads++;
      stats.bytesFetched += len;
      pieces.push(source.read(pos, len, into.subarray(pos - offset, pos - offset + len)));
    }
    filled = end;
  }
  into.fill(0, filled - offset);
  await Promise.all(pieces);
}

/** The ranges of [offset, end) to read: all of it, less zero runs of MIN_SKIPPED_ZEROS or more. */
export function dataRanges(zeros: ZeroMap | undefined, offset: number, end: number): Array<[number, number]> {
  if (!zeros) return [[offset, end]];
  const ranges: Array<[number, number]> = [];
  for (let pos = offset; pos < end; ) {
    const data = zeros.nextData(pos, end);
    if (data < 0) break;
    let hole = zeros.nextHole(data, end);
    // A short zero run between two data runs is read with them.
    while (hole < end) {
      const after = zeros.nextData(hole, end);
      if (after < 0 || after - hole >= MIN_SKIPPED_ZEROS) break;
      hole = zeros.nextHole(after, end);
    }
    ranges.push([data, hole]);
    pos = hole;
  }
  return ranges;
}
