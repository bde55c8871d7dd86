// One source read for a run of contiguous missing blocks. The cache's fetchMethod hands each
// missing block to the Batch of the read that found it missing; when that read has looked up
// all its blocks, start() turns the collected indices into runs (up to `maxBlocks` each),
// reads every run with as few source reads as maxRequest allows, and settles each block.
import type { Block, BlockSource, CacheStats } from './types.js';

interface Wanted {
  index: number;
  resolve: (block: Block) => void;
  reject: (err: unknown) => void;
}

export interface BatchOptions {
  source: BlockSource;
  blockSize: number;
  /** Longest run of blocks read at once. */
  maxBlocks: number;
  /** Largest single source read (runs longer than this are read in pieces, concurrently). */
  maxRequest: number;
  /** Blocks made by read-ahead are marked, to count prefetch hits. */
  prefetch: boolean;
  stats: CacheStats;
}

export class Batch {
  readonly #opts: BatchOptions;
  #wanted: Wanted[] = [];
  #started = false;

  constructor(opts: BatchOptions) {
    this.#opts = opts;
  }

  /** The fetch of one block; it starts with start() (at once if start() already ran). */
  add(index: number): Promise<Block> {
    return new Promise<Block>((resolve, reject) => {
      this.#wanted.push({ index, resolve, reject });
      if (this.#started) this.#flush();
    });
  }

  start(): void {
    this.#started = true;
    this.#flush();
  }

  #flush(): void {
    const wanted = this.#wanted.sort((a, b) => a.index - b.index);
    this.#wanted = [];
    let run: Wanted[] = [];
    for (const w of wanted) {
      const last = run.at(-1);
      if (last && (w.index !== last.index + 1 || run.length >= this.#opts.maxBlocks)) {
        void this.#readRun(run);
        run = [];
      }
      run.push(w);
    }
    if (run.length > 0) void this.#readRun(run);
  }

  async #readRun(run: Wanted[]): Promise<void> {
    try {
      const buffers = await readBlocks(this.#opts, run[0]!.index, run.length);
      run.forEach((w, i) => w.resolve({ data: buffers[i]!, prefetched: this.#opts.prefetch }));
    } catch (err) {
      // Every block of the run fails with the source's own error; none is cached.
      for (const w of run) w.reject(err);
    }
  }
}

/** Reads blocks first..first+count-1 (the last one clipped at the source's end). */
async function readBlocks(opts: BatchOptions, first: number, count: number): Promise<Buffer[]> {
  const { source, blockSize } = opts;
  const start = first * blockSize;
  const end = Math.min(source.size, (first + count) * blockSize);
  // allocUnsafeSlow: a buffer of its own, never a slice of Node's shared pool, so the bytes
  // the cache accounts for are the bytes it holds.
  const whole = Buffer.allocUnsafeSlow(end - start);
  await readPieces(opts, start, whole);
  if (count === 1) return [whole];
  // Copy out rather than keep slices: one slice still cached would pin the whole run's memory.
  const blocks: Buffer[] = [];
  for (let pos = 0; pos < whole.length; pos += blockSize) {
    const len = Math.min(blockSize, whole.length - pos);
    const block = Buffer.allocUnsafeSlow(len);
    whole.copy(block, 0, pos, pos + len);
    blocks.push(block);
  }
  return blocks;
}

/** Fills `into` from `offset` with source reads of at most maxRequest bytes, all in flight. */
async function readPieces(opts: BatchOptions, offset: number, into: Buffer): Promise<void> {
  const { source, maxRequest, stats } = opts;
  const pieces: Promise<void>[] = [];
  for (let pos = 0; pos < into.length; pos += maxRequest) {
    const len = Math.min(maxRequest, into.length - pos);
    stats.sourceReads++;
    // No signal: this read is shared by every reader of these blocks (STYLE.md habit 4);
    // the source enforces its own deadline.
    pieces.push(source.read(offset + pos, len, into.subarray(pos, pos + len)));
  }
  await Promise.all(pieces);
  stats.bytesFetched += into.length;
}
