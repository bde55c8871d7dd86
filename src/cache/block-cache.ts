// The block cache between FUSE reads and the NBD client (docs/read-path.md): aligned blocks in an LRU
// bounded in bytes, shared in-flight fetches, evicted blocks' buffers recycled for new fetches
// (buffer-pool.ts), zero extents served without a read, and per-open-file Readers that read
// ahead on sequential access.
import { LRUCache } from 'lru-cache';
import { VircptError } from '../errors.js';
import { raceAbort, throwIfAborted } from './abort.js';
import { BufferPool } from './buffer-pool.js';
import { fetchBlock, type FetchOptions } from './fetch.js';
import { Reader, readerConfig } from './reader.js';
import type { Block, BlockCacheOptions, BlockSource, CacheStats, ReadaheadOptions } from './types.js';
import { ZeroMap } from './zero-map.js';

const MiB = 1024 * 1024;
const DEFAULT_MAX_BYTES = 256 * MiB;
const DEFAULT_BLOCK_SIZE = MiB;
const DEFAULT_MAX_POOL = 32 * MiB;

/** What the cache knows of a source id. Reads use the BlockSource they are given. */
interface SourceState {
  zeros: ZeroMap | Promise<ZeroMap>;
  /** Blocks being fetched: invalidate() must drop them too (lru-cache's keys() skips them). */
  readonly inflight: Map<number, Promise<Block>>;
}

/** What lru-cache hands back to fetchMethod for one block fetch. */
interface FetchContext {
  readonly state: SourceState;
  readonly fetch: FetchOptions;
  readonly index: number;
}

/** The part of a read that falls in one block; `block` is undefined where zeros are known. */
interface Piece {
  readonly start: number;
  readonly end: number;
  readonly block: Promise<Block> | undefined;
}

type Lookup = 'hit' | 'inflight' | 'miss';

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new VircptError('INVALID', `block cache: ${name} must be a positive integer, got ${value}`);
  }
  return value;
}

const alignDown = (n: number, unit: number): number => Math.floor(n / unit) * unit;
const blockKey = (id: string, index: number): string => `${id}:${index}`;
const idOfKey = (key: string): string => key.slice(0, key.lastIndexOf(':'));

function newStats(): CacheStats {
  return {
    hits: 0, misses: 0, joins: 0, prefetchHits: 0, prefetchBlocks: 0, prefetchErrors: 0,
    sourceReads: 0, bytesFetched: 0, zeroBytes: 0, zeroMapErrors: 0,
    buffersAllocated: 0, buffersReused: 0, pooledBytes: 0, passedBlocks: 0,
  };
}

export class BlockCache {
  readonly blockSize: number;
  readonly maxBytes: number;
  readonly #pool: BufferPool;
  readonly #readahead: ReadaheadOptions;
  readonly #lru: LRUCache<string, Block, FetchContext>;
  readonly #sources = new Map<string, SourceState>();
  readonly #stats = newStats();
  /** Bytes read-ahead has in flight, across all readers; kept under #prefetchLimit. */
  #prefetchBytes = 0;
  /**
   * Read-ahead in flight is memory the LRU does not count yet: an eighth of the cache (32 MiB of
   * the default 256 MiB, two 16 MiB windows); a small cache may still fetch up to 8 blocks, at
   * most half of it.
   */
  readonly #prefetchLimit: number;
  /** What the LRU may store: maxBytes less read-ahead in flight and pooled buffers (below). */
  readonly #storeBytes: number;

  constructor(opts: BlockCacheOptions = {}) {
    this.blockSize = positiveInteger('blockSize', opts.blockSize ?? DEFAULT_BLOCK_SIZE);
    this.maxBytes = positiveInteger('maxBytes', opts.maxBytes ?? DEFAULT_MAX_BYTES);
    if (this.maxBytes < 2 * this.blockSize) {
      throw new VircptError('INVALID', `block cache: maxBytes ${this.maxBytes} holds fewer than two blocks`);
    }
    this.#prefetchLimit = Math.max(this.maxBytes / 8, Math.min(this.maxBytes / 2, 8 * this.blockSize));
    const poolBytes = opts.poolBytes ?? Math.floor(Math.min(DEFAULT_MAX_POOL, this.maxBytes / 4));
    if (poolBytes !== 0) positiveInteger('poolBytes', poolBytes);
    this.#pool = new BufferPool(this.blockSize, poolBytes);
    // maxBytes bounds every block buffer the cache holds: stored, fetched ahead, or waiting in
    // the pool (`-o cache=256M` is 192 MiB stored + 32 in flight + 32 pooled at most), so the
    // process's resident set is the cache size plus Node's own. A cache too small to split so
    // (the tests' few-block caches) stores maxBytes and keeps the rest on top.
    const aside = this.#prefetchLimit + poolBytes;
    this.#storeBytes = aside <= this.maxBytes / 2 ? this.maxBytes - aside : this.maxBytes;
    this.#readahead = opts.readahead ?? {};
    this.#lru = new LRUCache<string, Block, FetchContext>({
      maxSize: this.#storeBytes,
      maxEntrySize: this.blockSize,
      sizeCalculation: (block) => block.data.length,
      fetchMethod: (_key, _stale, { context }) => this.#startFetch(context),
      // A fetch is shared by every reader of its block; readers' signals never reach it (see
      // read()). lru-cache still aborts its own controller when an in-flight block is evicted
      // or deleted: ignoreFetchAbort lets the fetch finish and hand its bytes to the readers
      // already waiting (it is just not stored). allowStaleOnFetchAbort stays off: with no
      // stale value it would settle the one promise all those readers share with `undefined`.
      ignoreFetchAbort: true,
      allowStaleOnFetchAbort: false,
      // Evicted, deleted or cleared: only stored blocks get here, never a fetch that failed
      // or was not stored. The pool quarantines the buffer (buffer-pool.ts says why).
      dispose: (block) => this.#pool.give(block.data),
    });
  }

  /** A snapshot of the counters. */
  get stats(): CacheStats {
    const pool = this.#pool;
    return { ...this.#stats, buffersAllocated: pool.allocated, buffersReused: pool.reused, pooledBytes: pool.bytes };
  }

  /** Bytes of block data held now (never more than maxBytes). */
  get calculatedSize(): number {
    return this.#lru.calculatedSize;
  }

  /** A per-open-file reader that reads ahead on sequential access. */
  reader(source: BlockSource, opts: ReadaheadOptions = {}): Reader {
    return new Reader(this, source, readerConfig(this.blockSize, this.maxBytes, { ...this.#readahead, ...opts }));
  }

  /**
   * Copies [offset, offset + length) of `source`, clipped at its size, into `into`; returns the
   * bytes copied. `signal` ends this caller's wait (ABORTED, or TIMEOUT for
   * AbortSignal.timeout) and nothing else: fetches it started go on for other readers.
   */
  async read(source: BlockSource, offset: number, length: number, into: Buffer, signal?: AbortSignal): Promise<number> {
    throwIfAborted(signal);
    const end = this.#clip(source, offset, length, into);
    if (end === offset) return 0;
    const known = this.#state(source).zeros;
    const zeros = known instanceof ZeroMap ? known : await raceAbort(known, signal);
    // #state again: a new one if the source was invalidated while the zero map loaded.
    const pieces = this.#lookup(source, this.#state(source), offset, end, zeros);
    // Each piece is copied as soon as its block is there, in a reaction to that block alone:
    // waiting for all of them first would leave an early block, perhaps evicted and recycled
    // meanwhile, to be read later (buffer-pool.ts). Nothing is copied once this read settled
    // (aborted, failed): the caller may have reused `into` by then.
    const copy = { live: true };
    const copies = pieces.map((piece) => this.#copyWhenReady(piece, into, piece.start - offset, copy));
    try {
      await raceAbort(Promise.all(copies), signal);
    } finally {
      copy.live = false;
    }
    return end - offset;
  }

  /** The ranges of `source` known to read as zeros (loaded once per source; empty when
   *  base:allocation could not be had). */
  async zeroMap(source: BlockSource): Promise<ZeroMap> {
    return this.#state(source).zeros;
  }

  knownZeros(source: BlockSource): ZeroMap {
    const zeros = this.#state(source).zeros;
    return zeros instanceof ZeroMap ? zeros : ZeroMap.EMPTY;
  }

  /**
   * Starts fetching the blocks of [offset, end) that are neither cached, in flight nor zeros,
   * as few source reads as batching allows. Resolves when they settle; never rejects (a
   * failed block is not cached, and the read that needs it retries and reports).
   */
  async prefetch(source: BlockSource, offset: number, end: number): Promise<void> {
    const state = this.#state(source);
    const zeros = await state.zeros;
    if (this.#sources.get(source.id) !== state) return; // invalidated meanwhile
    const fetch = this.#fetchOptions(source, true, zeros);
    const pending: Promise<void>[] = [];
    const stop = Math.min(end, source.size);
    for (let index = Math.floor(offset / this.blockSize); index * this.blockSize < stop; index++) {
      const start = index * this.blockSize;
      if (zeros.covers(start, Math.min(source.size, start + this.blockSize))) continue;
      if (this.#lru.has(blockKey(source.id, index))) continue;
      if (this.#prefetchBytes + this.blockSize > this.#prefetchLimit) break;
      const { block, how } = this.#fetch(source.id, state, index, fetch);
      pending.push(how === 'miss' ? this.#trackPrefetch(block) : block.then(() => {}, () => {}));
    }
    await Promise.all(pending);
  }

  /**
   * Drops the stored blocks of `source` in [fromIndex, toIndex): a sequential reader has read
   * through them (use-once, as the kernel treats read-ahead pages). Their buffers go to the
   * pool for the next fetches, as for an eviction; blocks still in flight are left alone.
   */
  dropPassed(source: BlockSource, fromIndex: number, toIndex: number): void {
    for (let index = fromIndex; index < toIndex; index++) {
      const key = blockKey(source.id, index);
      if (this.#lru.has(key, { updateAgeOnHas: false })) {
        this.#lru.delete(key);
        this.#stats.passedBlocks++;
      }
    }
  }

  /**
   * Forgets every block and the zero map of a source id (its export was released). The
   * blocks' buffers may be recycled (bounded by the pool): readers still copying from them
   * finish first, as for an eviction.
   */
  invalidate(sourceId: string): void {
    const state = this.#sources.get(sourceId);
    this.#sources.delete(sourceId);
    for (const key of [...this.#lru.keys()]) {
      if (idOfKey(key) === sourceId) this.#lru.delete(key);
    }
    // Deleting an in-flight block makes lru-cache drop its result when it arrives.
    for (const index of state?.inflight.keys() ?? []) this.#lru.delete(blockKey(sourceId, index));
  }

  dropSource(source: BlockSource): void {
    this.invalidate(source.id);
  }

  /** Forgets every block of every source, and lets go of the buffers kept for reuse. */
  clear(): void {
    for (const id of [...this.#sources.keys()]) this.invalidate(id);
    this.#lru.clear();
    this.#pool.drain();
  }

  /** Validates a read and returns its end, clipped at the source's size (`offset` if empty). */
  #clip(source: BlockSource, offset: number, length: number, into: Buffer): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new VircptError('INVALID', `read of ${source.id}: bad range offset=${offset} length=${length}`);
    }
    const end = Math.min(offset + length, source.size);
    if (end <= offset) return offset;
    if (into.length < end - offset) {
      throw new VircptError('INVALID', `read of ${source.id}: buffer of ${into.length} bytes for ${end - offset}`);
    }
    return end;
  }

  #state(source: BlockSource): SourceState {
    let state = this.#sources.get(source.id);
    if (state) return state;
    const fresh: SourceState = { zeros: ZeroMap.EMPTY, inflight: new Map() };
    if (source.zeroExtents) {
      // Asked once per source; the promise is stored so that concurrent first reads share it.
      const load = source.zeroExtents.bind(source);
      fresh.zeros = Promise.resolve()
        .then(load)
        .then(
          (extents) => ZeroMap.from(extents, source.size),
          () => {
            // Only an optimisation: without it, zero ranges are simply read from the source.
            this.#stats.zeroMapErrors++;
            return ZeroMap.EMPTY;
          },
        )
        .then((map) => (fresh.zeros = map));
    }
    state = fresh;
    this.#sources.set(source.id, state);
    return state;
  }

  /** Splits [offset, end) at block boundaries and starts the fetches it needs, in order. */
  #lookup(source: BlockSource, state: SourceState, offset: number, end: number, zeros: ZeroMap): Piece[] {
    const fetch = this.#fetchOptions(source, false, zeros);
    const pieces: Piece[] = [];
    for (let pos = offset; pos < end; ) {
      const index = Math.floor(pos / this.blockSize);
      const pieceEnd = Math.min(end, (index + 1) * this.blockSize);
      // A piece inside a zero extent needs no block, even if the rest of its block has data.
      let block: Promise<Block> | undefined;
      if (!zeros.covers(pos, pieceEnd)) {
        const found = this.#fetch(source.id, state, index, fetch);
        this.#count(found.how);
        block = found.block;
      }
      pieces.push({ start: pos, end: pieceEnd, block });
      pos = pieceEnd;
    }
    return pieces;
  }

  #fetch(id: string, state: SourceState, index: number, fetch: FetchOptions): { block: Promise<Block>; how: Lookup } {
    const status: LRUCache.Status<string, Block, FetchContext> = {};
    const key = blockKey(id, index);
    const block = this.#lru.fetch(key, { context: { state, fetch, index }, status }).then((b) => {
      if (!b) throw new VircptError('IO', `block ${key}: fetch ended without data`);
      return b;
    });
    return { block, how: status.fetch === 'hit' || status.fetch === 'inflight' ? status.fetch : 'miss' };
  }

  /** lru-cache's fetchMethod (called synchronously by fetch()): starts the source read. */
  #startFetch({ state, fetch, index }: FetchContext): Promise<Block> {
    const block = fetchBlock(fetch, index);
    state.inflight.set(index, block);
    const forget = (): void => {
      if (state.inflight.get(index) === block) state.inflight.delete(index);
    };
    block.then(forget, forget);
    return block;
  }

  /** `zeros`: the source's loaded zero map, so that a fetch skips the zero runs in its block. */
  #fetchOptions(source: BlockSource, prefetch: boolean, zeros: ZeroMap): FetchOptions {
    const maxRequest = Math.max(1, Math.floor(source.maxRequest ?? this.blockSize));
    return { source, blockSize: this.blockSize, maxRequest, prefetch, stats: this.#stats, pool: this.#pool, zeros };
  }

  #trackPrefetch(block: Promise<Block>): Promise<void> {
    this.#prefetchBytes += this.blockSize;
    this.#stats.prefetchBlocks++;
    return block.then(
      () => void (this.#prefetchBytes -= this.blockSize),
      () => {
        this.#prefetchBytes -= this.blockSize;
        this.#stats.prefetchErrors++;
      },
    );
  }

  #count(how: Lookup): void {
    if (how === 'hit') this.#stats.hits++;
    else if (how === 'inflight') this.#stats.joins++;
    else this.#stats.misses++;
  }

  /** Copies the piece into `into` at `at` once its block resolves, if the read is still live. */
  #copyWhenReady(piece: Piece, into: Buffer, at: number, copy: { live: boolean }): Promise<void> | undefined {
    if (!piece.block) {
      const length = piece.end - piece.start;
      into.fill(0, at, at + length);
      this.#stats.zeroBytes += length;
      return undefined;
    }
    return piece.block.then((block) => {
      if (copy.live) this.#copy(piece, block, into, at);
    });
  }

  #copy(piece: Piece, block: Block, into: Buffer, at: number): void {
    if (block.prefetched) {
      block.prefetched = false;
      this.#stats.prefetchHits++;
    }
    const base = alignDown(piece.start, this.blockSize);
    block.data.copy(into, at, piece.start - base, piece.end - base);
  }
}
