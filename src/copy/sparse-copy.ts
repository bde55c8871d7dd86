// A sparse copy of one exported disk into a raw file: ranges that base:allocation marks ZERO are
// never read, chunks that read back as all zeros are never written, and the rest is read in
// pipelined chunks straight into a fixed set of buffers (memory stays flat whatever the size).
//
// The data is written with O_DIRECT where the filesystem takes it, so the copy does not pile up
// in the page cache: like nbdcopy, which writes back and evicts every range it wrote as it goes
// (libnbd copy/file-ops.c, evict_writes: sync_file_range + POSIX_FADV_DONTNEED), which Node
// cannot call. Filling the page cache with a disk's worth of fresh dirty pages is the slow part
// where memory is cheap to reserve but dear to touch: on a VM whose balloon reports free pages to
// the host (virtio-balloon free page reporting) every new page costs a host fault, and how much
// depends on how long the memory had been free (figures: docs/benchmarks.md).
import { setMaxListeners } from 'node:events';
import { constants } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import type { NbdDisk } from '../exports/nbd-disk.js';

const MiB = 1024 * 1024;
/** Buffers one pwritev() takes at most (Linux's UIO_MAXIOV). */
const IOV_MAX = 1024;
/**
 * O_DIRECT needs the file offset, every length and every buffer address aligned to the logical
 * block size (512 or 4096); a page satisfies both, and on ext4 (4 KiB blocks) a write aligned to
 * less would be an 'unaligned' direct write, serialized and zero-filled.
 */
const ALIGN = 4096;
/** WebAssembly memory comes in pages of 64 KiB, each aligned: the source of aligned buffers. */
const WASM_PAGE = 65536;

/** The global WebAssembly, which the project's type libraries do not declare. */
const wasm = (globalThis as { WebAssembly?: { Memory: new (d: { initial: number }) => { buffer: ArrayBuffer } } }).WebAssembly;

/**
 * `count` buffers of `size` bytes at page-aligned addresses, or undefined where that cannot be
 * had. Node's Buffers come from malloc (16-byte aligned: glibc puts its header in front of an
 * mmap'ed block), and JavaScript never sees an address; a WebAssembly.Memory is mmap'ed whole,
 * so views into it at multiples of 4096 are aligned.
 */
function alignedBuffers(count: number, size: number): Buffer[] | undefined {
  const stride = Math.ceil(size / ALIGN) * ALIGN;
  try {
    const mem = new wasm!.Memory({ initial: Math.ceil((count * stride) / WASM_PAGE) });
    return Array.from({ length: count }, (_, i) => Buffer.from(mem.buffer, i * stride, size));
  } catch {
    return undefined; // no WebAssembly (--jitless) or no memory for it: buffered writes it is
  }
}

const isAligned = (n: number) => n % ALIGN === 0;
/**
 * Direct writes in flight. ext4 still runs them one after the other (a direct write into a hole
 * holds the inode lock until its data is on the device), but the second one waits in the kernel
 * and starts the moment the first ends, not after a round trip through the event loop and the
 * thread pool; the writer is what a direct copy waits for (busy 2.0-2.6 s of a 3 s copy).
 */
const DIRECT_LANES = 2;

export interface CopyOptions {
  signal?: AbortSignal;
  /**
   * Bytes per read (default 2 MiB: larger direct writes, fewer of them. Medians of 6-8 pairs
   * against nbdcopy on a loaded machine, direct writes: 16 x 1 MiB 0.65-0.80; 16 x 2 MiB 0.84
   * with one write in flight, 0.85-0.96 with two. 8 MiB buffers cost a new process more in page
   * faults than they save).
   */
  chunk?: number;
  /** Reads in flight (default 16). */
  inFlight?: number;
  /** Called with bytes handled so far (read or known zero). */
  onProgress?: (delta: number) => void;
  /** Called once every byte to copy has been read: the disk is not read again. */
  onReadsDone?: () => void;
}

export interface CopyResult {
  size: number;
  /** Bytes read over NBD. */
  readBytes: number;
  /** Bytes written to the file (the rest stays a hole). */
  writtenBytes: number;
}

/** [offset, length] ranges of [0, size) outside the zero extents, cut into chunks. */
export function dataChunks(size: number, zeros: readonly { offset: number; length: number }[], chunk: number): [number, number][] {
  const out: [number, number][] = [];
  const cut = (from: number, to: number) => {
    for (let at = from; at < to; at += chunk - (at % chunk)) out.push([at, Math.min(to, at + chunk - (at % chunk)) - at]);
  };
  let pos = 0;
  for (const z of zeros) {
    if (z.offset > pos) cut(pos, Math.min(z.offset, size));
    pos = Math.max(pos, z.offset + z.length);
  }
  if (pos < size) cut(pos, size);
  return out;
}

/**
 * Positional writes to one file, few at a time. Concurrent buffered pwrite()s on one inode only
 * contend for its lock (the kernel spins on it; docs/benchmarks.md): one at a time;
 * writes queued meanwhile leave together, runs of adjacent ones as one pwritev(). A run that is
 * aligned all through goes to `direct` (the file opened again with O_DIRECT) when there is one,
 * the rest (a disk's odd tail, a short write's remainder) through the page cache. The two stay
 * coherent because ranges never share a page: a direct run covers whole pages of its own.
 */
class SerialWriter {
  readonly #fh: FileHandle;
  #direct: FileHandle | undefined;
  #queue: { offset: number; data: Buffer; done: (err?: unknown) => void }[] = [];
  #active = 0;

  constructor(fh: FileHandle, direct?: FileHandle) {
    this.#fh = fh;
    this.#direct = direct;
  }

  write(data: Buffer, offset: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ offset, data, done: (err) => (err === undefined ? resolve() : reject(err)) });
      if (this.#active < (this.#direct ? DIRECT_LANES : 1)) void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#active++;
    while (this.#queue.length > 0) {
      const batch = this.#queue.splice(0).sort((a, b) => a.offset - b.offset);
      for (let i = 0; i < batch.length;) {
        let j = i + 1;
        let end = batch[i]!.offset + batch[i]!.data.length;
        for (; j < batch.length && batch[j]!.offset === end && j - i < IOV_MAX; j++) end += batch[j]!.data.length;
        const run = batch.slice(i, j);
        const err = await this.#writeAll(run.map((w) => w.data), run[0]!.offset)
          .then(() => undefined, (e: unknown) => e ?? new Error('write failed'));
        for (const w of run) w.done(err);
        i = j;
      }
    }
    this.#active--;
  }

  async #writeAll(buffers: Buffer[], offset: number): Promise<void> {
    const total = buffers.reduce((n, b) => n + b.length, 0);
    let done = await this.#writeDirect(buffers, offset);
    if (done === undefined) ({ bytesWritten: done } = await this.#fh.writev(buffers, offset));
    if (done === total) return;
    const flat = Buffer.concat(buffers); // a short write (rare on a regular file): the rest, flat
    while (done < total) {
      const { bytesWritten } = await this.#fh.write(flat, done, total - done, offset + done);
      if (bytesWritten === 0) throw new Error(`writing at ${offset + done}: no progress`);
      done += bytesWritten;
    }
  }

  /** Bytes written with O_DIRECT, or undefined when this run has to go through the page cache. */
  async #writeDirect(buffers: Buffer[], offset: number): Promise<number | undefined> {
    const direct = this.#direct;
    if (!direct || !isAligned(offset) || !buffers.every((b) => isAligned(b.length) && isAligned(b.byteOffset))) return undefined;
    try {
      return (await direct.writev(buffers, offset)).bytesWritten;
    } catch (err) {
      // EINVAL: the filesystem takes O_DIRECT at open() but not these writes (alignment it wants
      // larger than a page). The page cache then, from here on; any other error is the file's.
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
      this.#direct = undefined;
      await direct.close().catch(() => undefined);
      return undefined;
    }
  }

  async close(): Promise<void> {
    await this.#direct?.close();
    this.#direct = undefined;
  }
}

/** The file opened again for O_DIRECT writes, or undefined where its filesystem has none (tmpfs before Linux 6.6). */
async function openDirect(file: string): Promise<FileHandle | undefined> {
  return open(file, constants.O_WRONLY | constants.O_DIRECT).catch(() => undefined);
}

export async function copyDisk(disk: NbdDisk, outFile: string, opts: CopyOptions = {}): Promise<CopyResult> {
  const chunk = Math.min(opts.chunk ?? 2 * MiB, disk.maxRequest > 0 ? disk.maxRequest : 32 * MiB);
  const zeros = await disk.zeroExtents();
  const chunks = dataChunks(disk.size, zeros, chunk);
  const zeroBytes = disk.size - chunks.reduce((n, [, len]) => n + len, 0);
  const inFlight = opts.inFlight ?? 16;
  const fh = await open(outFile, 'wx', 0o644); // never overwrite a file
  // Aligned buffers, and the file for O_DIRECT; without either, every write is buffered.
  const buffers = alignedBuffers(inFlight, chunk);
  const out = new SerialWriter(fh, buffers ? await openDirect(outFile) : undefined);
  const result: CopyResult = { size: disk.size, readBytes: 0, writtenBytes: 0 };
  // Every read in flight listens for cancellation: one listener on the caller's signal, fanned
  // out through a signal of ours that takes as many as there are reads.
  const cancel = new AbortController();
  setMaxListeners(0, cancel.signal);
  const onAbort = () => cancel.abort(opts.signal!.reason);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();
  const signal = cancel.signal;
  const zero = Buffer.alloc(chunk);
  let next = 0;
  let unread = chunks.length;
  const worker = async (_: unknown, i: number) => {
    const buf = buffers?.[i] ?? Buffer.allocUnsafe(chunk);
    while (next < chunks.length) {
      signal.throwIfAborted();
      const [offset, length] = chunks[next++]!;
      const view = buf.subarray(0, length);
      await disk.read(offset, length, view, signal);
      result.readBytes += length;
      if (--unread === 0) opts.onReadsDone?.();
      if (!view.equals(zero.subarray(0, length))) {
        await out.write(view, offset);
        result.writtenBytes += length;
      }
      opts.onProgress?.(length);
    }
  };
  try {
    await fh.truncate(disk.size); // holes for everything not written
    opts.onProgress?.(zeroBytes);
    if (chunks.length === 0) opts.onReadsDone?.();
    const workers = Array.from({ length: inFlight }, worker);
    await Promise.all(workers).catch(async (err: unknown) => {
      cancel.abort(err); // the other workers stop too, before the file goes
      await Promise.allSettled(workers);
      throw err;
    });
    await out.close();
    // On disk before we say it is copied, as a backup must be (most of it went there directly).
    await fh.datasync();
    await fh.close();
    return result;
  } catch (err) {
    await out.close().catch(() => undefined);
    await fh.close().catch(() => undefined);
    await rm(outFile, { force: true }); // a partial copy is worth nothing: leave no half file
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}
