// Test sources. FileBlockSource reads a real file (the product's real source is NBD);
// FaultySource wraps a source to hold, slow down or fail its reads, for what a real file
// cannot produce on demand. Both count what reaches them.
import { randomBytes, randomFillSync } from 'node:crypto';
import { mkdtemp, open, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VircptError } from '../../src/errors.js';
import type { BlockSource, Extent } from '../../src/cache/index.js';

export interface SourceRead {
  offset: number;
  length: number;
}

export class FileBlockSource implements BlockSource {
  readonly id: string;
  readonly size: number;
  readonly maxRequest: number | undefined;
  readonly zeroExtents: (() => Promise<Extent[]>) | undefined;
  /** Every read that reached the file, in order. */
  readonly log: SourceRead[] = [];
  zeroExtentCalls = 0;
  readonly #fh: FileHandle;

  private constructor(fh: FileHandle, size: number, opts: FileSourceOptions) {
    this.#fh = fh;
    this.size = size;
    this.id = opts.id ?? `file-${process.pid}-${randomBytes(4).toString('hex')}`;
    this.maxRequest = opts.maxRequest;
    const zeros = opts.zeroExtents;
    this.zeroExtents = zeros && (async () => (this.zeroExtentCalls++, zeros.map((e) => ({ ...e }))));
  }

  static async open(path: string, opts: FileSourceOptions = {}): Promise<FileBlockSource> {
    const fh = await open(path, 'r');
    const { size } = await fh.stat();
    return new FileBlockSource(fh, size, opts);
  }

  get reads(): number {
    return this.log.length;
  }

  get bytesRead(): number {
    return this.log.reduce((sum, r) => sum + r.length, 0);
  }

  async read(offset: number, length: number, into: Buffer): Promise<void> {
    this.log.push({ offset, length });
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.#fh.read(into, done, length - done, offset + done);
      if (bytesRead === 0) throw new VircptError('IO', `${this.id}: short read at ${offset + done}`);
      done += bytesRead;
    }
  }

  close(): Promise<void> {
    return this.#fh.close();
  }
}

export interface FileSourceOptions {
  id?: string;
  maxRequest?: number;
  /** Ranges the test wrote as zeros, reported as the source's zero extents. */
  zeroExtents?: Extent[];
}

/** Wraps a source: hold reads until release(), delay them, or fail the next ones. */
export class FaultySource implements BlockSource {
  readonly id: string;
  readonly size: number;
  readonly maxRequest: number | undefined;
  readonly zeroExtents: (() => Promise<Extent[]>) | undefined;
  delayMs = 0;
  /** When set, each read's delay in ms (instead of delayMs). */
  delayFor: (() => number) | undefined;
  /** The buffer every read was given, in order. */
  readonly intos: Buffer[] = [];
  /** Reads that entered read() (held ones included) and that are not yet settled. */
  started = 0;
  pending = 0;
  /** Only reads this returns true for are held by hold(). */
  holdIf: (offset: number, length: number) => boolean = () => true;
  readonly #inner: BlockSource;
  #failures: Error[] = [];
  #gate: { promise: Promise<void>; open: () => void } | undefined;

  constructor(inner: BlockSource) {
    this.#inner = inner;
    this.id = inner.id;
    this.size = inner.size;
    this.maxRequest = inner.maxRequest;
    this.zeroExtents = inner.zeroExtents?.bind(inner);
  }

  hold(): void {
    let open = (): void => {};
    const promise = new Promise<void>((resolve) => (open = resolve));
    this.#gate = { promise, open };
  }

  release(): void {
    this.#gate?.open();
    this.#gate = undefined;
  }

  /** The next reads fail with these errors, one each. */
  failNext(...errors: Error[]): void {
    this.#failures.push(...errors);
  }

  async read(offset: number, length: number, into: Buffer): Promise<void> {
    this.started++;
    this.pending++;
    this.intos.push(into);
    try {
      if (this.#gate && this.holdIf(offset, length)) await this.#gate.promise;
      const delay = this.delayFor?.() ?? this.delayMs;
      if (delay > 0) await sleep(delay);
      const failure = this.#failures.shift();
      if (failure) throw failure;
      await this.#inner.read(offset, length, into);
    } finally {
      this.pending--;
    }
  }
}

/**
 * A fake, for what a file cannot do: answer from memory, filling `into` synchronously inside
 * read() (as a source with the bytes at hand could), or after a random delay. A recycled
 * buffer that someone still reads from is overwritten at once.
 */
export class MemoryFakeSource implements BlockSource {
  readonly id = `memory-fake-${process.pid}-${randomBytes(4).toString('hex')}`;
  readonly size: number;
  readonly #data: Buffer;
  readonly #delay: () => number;

  /** `delay()` gives each read's delay in ms; 0: the bytes are copied before read() returns. */
  constructor(data: Buffer, delay: () => number) {
    this.#data = data;
    this.size = data.length;
    this.#delay = delay;
  }

  read(offset: number, length: number, into: Buffer): Promise<void> {
    const fill = (): void => void this.#data.copy(into, 0, offset, offset + length);
    const ms = this.#delay();
    if (ms === 0) {
      fill();
      return Promise.resolve();
    }
    return sleep(ms).then(fill);
  }
}

export interface TestFile {
  path: string;
  data: Buffer;
  cleanup: () => Promise<void>;
}

/** A file of `size` random bytes with `zeros` written as zeros, in a fresh temp directory. */
export async function makeTestFile(size: number, zeros: Extent[] = []): Promise<TestFile> {
  const data = randomFillSync(Buffer.alloc(size));
  for (const z of zeros) data.fill(0, Math.min(size, z.offset), Math.min(size, z.offset + z.length));
  const dir = await mkdtemp(join(tmpdir(), `vircptfs-cache-${process.pid}-`));
  const cleanup = (): Promise<void> => rm(dir, { recursive: true, force: true });
  const path = join(dir, 'disk.raw');
  try {
    await writeFile(path, data);
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { path, data, cleanup };
}

/** Resolves once `check()` holds, polling; fails after `ms`. */
export async function until(check: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await sleep(2);
  }
}
