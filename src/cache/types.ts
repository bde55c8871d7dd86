// The block cache's view of the world: a BlockSource it reads from (the product's is the NBD
// client, wired in exports/; tests use a file), and the numbers it reports. Nothing here
// knows about NBD: the cache never imports src/nbd.

/** A byte range of a source. */
export interface Extent {
  offset: number;
  length: number;
}

/** Something that reads exact byte ranges of one disk at one point in time. */
export interface BlockSource {
  /** Unique per export and disk: a new export is a new id, so old blocks never serve it. */
  readonly id: string;
  readonly size: number;
  /** Fills `into` (exactly `length` bytes) with the bytes at `offset`, or rejects. */
  read(offset: number, length: number, into: Buffer, signal?: AbortSignal): Promise<void>;
  /** Ranges known to read as zeros (NBD base:allocation ZERO); asked once per source. */
  zeroExtents?(): Promise<Extent[]>;
  /** The largest single read the source likes (e.g. the NBD server's maximum block size). */
  readonly maxRequest?: number;
}

/** One cached block; `data` is short only for the last block of a source. */
export interface Block {
  readonly data: Buffer;
  /** Fetched by read-ahead and not yet used by a read (for the prefetch-hit count). */
  prefetched: boolean;
}

/** Counters for the benchmark and the logs. Block counts are per block looked up by a read. */
export interface CacheStats {
  /** A read found the block in the cache. */
  hits: number;
  /** A read had to fetch the block. */
  misses: number;
  /** A read joined a fetch already in flight (another reader's, or read-ahead's). */
  joins: number;
  /** Blocks fetched by read-ahead that a read then used. */
  prefetchHits: number;
  /** Blocks read-ahead asked the source for. */
  prefetchBlocks: number;
  /** Read-ahead fetches that failed (not reported to anyone: the next read retries). */
  prefetchErrors: number;
  /** Calls to BlockSource.read, and the bytes they returned. */
  sourceReads: number;
  bytesFetched: number;
  /** Bytes served as zeros from zero extents, without a source read or cache memory. */
  zeroBytes: number;
  /** zeroExtents() calls that failed (that source is then read without a zero map). */
  zeroMapErrors: number;
  /** Block buffers allocated, and taken from the buffers of evicted blocks instead. */
  buffersAllocated: number;
  buffersReused: number;
  /** Bytes of evicted blocks' buffers held for reuse now (not part of the cache's size). */
  pooledBytes: number;
  /** Blocks a sequential reader had read through, dropped before the LRU would (use-once). */
  passedBlocks: number;
}

export interface ReadaheadOptions {
  /** The first read-ahead window, in bytes (default 2 MiB). */
  minWindow?: number;
  /** The largest window (default 16 MiB; never more than a quarter of the cache). */
  maxWindow?: number;
  /**
   * How far from the expected offset a read still counts as sequential (default 4 MiB):
   * the kernel's read-ahead requests reach JS out of order (reader.ts has the figures).
   */
  reorderSlack?: number;
  /**
   * Drop the blocks a sequential reader has read through (default true): the kernel's page
   * cache holds those pages already, and one file streamed end to end would otherwise push
   * every other block out of the LRU (and touch the whole cache's memory).
   */
  dropPassed?: boolean;
}

export interface BlockCacheOptions {
  /** Bytes of block data the cache keeps (default 256 MiB). */
  maxBytes?: number;
  /** Block size in bytes; blocks are aligned to it (default 1 MiB). */
  blockSize?: number;
  /**
   * Bytes of evicted blocks' buffers kept for new fetches (default: a quarter of maxBytes, at
   * most 32 MiB; 0: every fetch allocates). Part of maxBytes, like read-ahead in flight, unless
   * the two would take more than half of it (then on top).
   */
  poolBytes?: number;
  readahead?: ReadaheadOptions;
}

/** What a Reader asks of the cache under it (BlockCache implements it). */
/** lseek(2)'s view of a source's zero extents (ZeroMap, zero-map.ts): -1 for none. */
export interface Holes {
  nextData(offset: number, size: number): number;
  nextHole(offset: number, size: number): number;
}

export interface CacheReads {
  read(source: BlockSource, offset: number, length: number, into: Buffer, signal?: AbortSignal): Promise<number>;
  /** The source's zero map if loaded already, else an empty one (never waits). */
  knownZeros(source: BlockSource): Holes;
  prefetch(source: BlockSource, offset: number, end: number): Promise<void>;
  dropPassed(source: BlockSource, fromIndex: number, toIndex: number): void;
}
