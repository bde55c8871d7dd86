// One open file's reads, with read-ahead on sequential access only (sshfs's next_pos ==
// offset: a read that starts where the last one ended). The window grows 2 -> 4 -> 8 -> 16 MiB
// like Linux read-ahead: each chunk is fetched while the reader consumes the previous one, and a
// read that enters a chunk (passes its "trigger", Linux's PG_readahead mark) asks for the next,
// twice as large.
// The reads themselves never wait for read-ahead.
// Holes (the zero map, once loaded) do not count: readers that skip them with SEEK_DATA (cp,
// tar --sparse, qemu-img) stay one stream, and a window holds its size in data, so the next
// data run is on its way while the reader finishes this one.
import { VircptError } from '../errors.js';
import type { BlockSource, CacheReads, Holes, ReadaheadOptions } from './types.js';

const MiB = 1024 * 1024;
const DEFAULT_READAHEAD_MIN = 2 * MiB;
const DEFAULT_READAHEAD_MAX = 16 * MiB;
/**
 * How far out of order reads of one sequential stream reach JS: libfuse's worker threads each
 * wake the loop through their own handle, and the kernel has a whole read-ahead window of
 * requests in flight. Measured on a 4 GiB file: dd bs=1M up to 1 MiB either side of the
 * furthest read so far; cat, whose POSIX_FADV_SEQUENTIAL doubles the kernel's window, 3 MiB.
 */
export const DEFAULT_REORDER_SLACK = 4 * MiB;

export interface ReaderConfig {
  blockSize: number;
  minWindow: number;
  maxWindow: number;
  /** How far from nextOffset a read still counts as sequential (0: exactly nextOffset). */
  reorderSlack: number;
  /** Drop the blocks a sequential run has read through (ReadaheadOptions.dropPassed). */
  dropPassed: boolean;
}

/** Windows in whole blocks, at least one block, and bounded by the cache's size. */
export function readerConfig(blockSize: number, maxBytes: number, opts: ReadaheadOptions): ReaderConfig {
  const blocks = (n: number): number => Math.max(blockSize, Math.floor(n / blockSize) * blockSize);
  // Read-ahead keeps up to two windows ahead of the reader: a quarter of the cache each at
  // most, so what it fetches cannot push out the blocks being read.
  const maxWindow = Math.min(blocks(maxBytes / 4), blocks(opts.maxWindow ?? DEFAULT_READAHEAD_MAX));
  const minWindow = Math.min(maxWindow, blocks(opts.minWindow ?? DEFAULT_READAHEAD_MIN));
  const reorderSlack = Math.max(0, opts.reorderSlack ?? DEFAULT_REORDER_SLACK);
  return { blockSize, minWindow, maxWindow, reorderSlack, dropPassed: opts.dropPassed ?? true };
}

export class Reader {
  readonly source: BlockSource;
  readonly #cache: CacheReads;
  readonly #cfg: ReaderConfig;
  #nextOffset = 0;
  /** Size of the last read-ahead chunk; 0 after random access. */
  #window = 0;
  /** End of what read-ahead has asked for. */
  #aheadEnd = 0;
  /** A sequential read ending past this asks for the next chunk. */
  #trigger = 0;
  /** Blocks from here on are not yet dropped as read through: the first whole block of the
   *  current sequential run, or the first one not dropped yet. */
  #passedFrom = 0;
  readonly #pending = new Set<Promise<void>>();
  #closed: Promise<void> | undefined;

  constructor(cache: CacheReads, source: BlockSource, cfg: ReaderConfig) {
    this.#cache = cache;
    this.source = source;
    this.#cfg = cfg;
  }

  /** Where a sequential reader reads next. */
  get nextOffset(): number {
    return this.#nextOffset;
  }

  /** The current read-ahead window in bytes (0: not reading ahead). */
  get window(): number {
    return this.#window;
  }

  /** Like BlockCache.read, and reads ahead when this read continues the previous ones. */
  read(offset: number, length: number, into: Buffer, signal?: AbortSignal): Promise<number> {
    if (this.#closed) {
      return Promise.reject(new VircptError('INVALID', `read of ${this.source.id} after close`));
    }
    // Ask for this read's blocks first, so that they go to the source before read-ahead's.
    const done = this.#cache.read(this.source, offset, length, into, signal);
    const end = Math.min(offset + length, this.source.size);
    if (end > offset) this.#observe(offset, end);
    return done;
  }

  /** Stops reading ahead; resolves once read-ahead already in flight has settled. */
  close(): Promise<void> {
    return (this.#closed ??= Promise.all([...this.#pending]).then(() => {}));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #observe(offset: number, end: number): void {
    const zeros = this.#cache.knownZeros(this.source);
    if (!this.#continues(offset, zeros)) {
      // Random access: no read-ahead until reads are sequential again.
      this.#window = 0;
      this.#aheadEnd = 0;
      this.#trigger = 0;
      this.#nextOffset = end;
      this.#passedFrom = Math.ceil(offset / this.#cfg.blockSize);
      return;
    }
    // Reads that arrive slightly out of order must not move nextOffset back.
    this.#nextOffset = Math.max(this.#nextOffset, end);
    this.#dropPassed();
    if (end >= this.source.size) return;
    if (this.#aheadEnd <= end) {
      // Nothing ahead yet: start with the smallest window. The reader caught up with
      // read-ahead: the window was too small for it, so the next one is twice as large.
      const from = Math.ceil(end / this.#cfg.blockSize) * this.#cfg.blockSize;
      this.#window = this.#window ? Math.min(this.#window * 2, this.#cfg.maxWindow) : this.#cfg.minWindow;
      this.#issue(from, this.#window, zeros);
    } else if (end > this.#trigger) {
      this.#window = Math.min(this.#window * 2, this.#cfg.maxWindow);
      this.#issue(this.#aheadEnd, this.#window, zeros);
    }
  }

  /** Whether a read at `offset` goes on with the stream: near where it was, or past it with
   *  nothing but known zeros in between. */
  #continues(offset: number, zeros: Holes): boolean {
    const slack = this.#cfg.reorderSlack;
    if (Math.abs(offset - this.#nextOffset) <= slack) return true;
    if (offset < this.#nextOffset) return false;
    const data = zeros.nextData(this.#nextOffset, this.source.size);
    return data >= 0 && offset - data <= slack;
  }

  /** Drops the blocks this run has read through, short of the reorder slack behind it: a
   *  read that arrives late may still need those. */
  #dropPassed(): void {
    if (!this.#cfg.dropPassed) return;
    const upTo = Math.floor((this.#nextOffset - this.#cfg.reorderSlack) / this.#cfg.blockSize);
    if (upTo <= this.#passedFrom) return;
    this.#cache.dropPassed(this.source, this.#passedFrom, upTo);
    this.#passedFrom = upTo;
  }

  /** Reads ahead from `from` until `length` bytes of data (not known zeros) are covered. */
  #issue(from: number, length: number, zeros: Holes): void {
    const to = dataEnd(zeros, from, length, this.source.size);
    if (to <= from) return;
    this.#trigger = from;
    this.#aheadEnd = to;
    const work = this.#cache.prefetch(this.source, from, to).catch(() => {});
    this.#pending.add(work);
    void work.then(() => this.#pending.delete(work));
  }
}

/** Where a range from `from` holding `length` bytes outside the zero map ends (at most `size`). */
export function dataEnd(zeros: Holes, from: number, length: number, size: number): number {
  let pos = from;
  let left = length;
  while (left > 0 && pos < size) {
    const data = zeros.nextData(pos, size);
    if (data < 0) return size;
    const take = Math.min(left, zeros.nextHole(data, size) - data);
    left -= take;
    pos = data + take;
  }
  return Math.min(pos, size);
}
