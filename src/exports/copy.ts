// A sparse copy of one exported disk into a raw file: ranges that base:allocation marks ZERO are
// never read, chunks that read back as all zeros are never written, and the rest is read in
// pipelined chunks straight into a fixed set of buffers (memory stays flat whatever the size).
import { open, rm } from 'node:fs/promises';
import type { NbdDisk } from './nbd-disk.js';

const MiB = 1024 * 1024;

export interface CopyOptions {
  signal?: AbortSignal;
  /** Bytes per read (default 1 MiB: fresh 8 MiB buffers cost a new process more in page faults than they save). */
  chunk?: number;
  /** Reads in flight (default 16). */
  inFlight?: number;
  /** Called with bytes handled so far (read or known zero). */
  onProgress?: (delta: number) => void;
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

export async function copyDisk(disk: NbdDisk, outFile: string, opts: CopyOptions = {}): Promise<CopyResult> {
  const chunk = Math.min(opts.chunk ?? 1 * MiB, disk.maxRequest > 0 ? disk.maxRequest : 32 * MiB);
  const zeros = await disk.zeroExtents();
  const chunks = dataChunks(disk.size, zeros, chunk);
  const zeroBytes = disk.size - chunks.reduce((n, [, len]) => n + len, 0);
  const fh = await open(outFile, 'wx', 0o644); // never overwrite a file
  const result: CopyResult = { size: disk.size, readBytes: 0, writtenBytes: 0 };
  try {
    await fh.truncate(disk.size); // holes for everything not written
    opts.onProgress?.(zeroBytes);
    const zero = Buffer.alloc(chunk);
    let next = 0;
    const worker = async () => {
      const buf = Buffer.allocUnsafe(chunk);
      while (next < chunks.length) {
        opts.signal?.throwIfAborted();
        const [offset, length] = chunks[next++]!;
        const view = buf.subarray(0, length);
        await disk.read(offset, length, view, opts.signal);
        result.readBytes += length;
        if (!view.equals(zero.subarray(0, length))) {
          await fh.write(view, 0, length, offset);
          result.writtenBytes += length;
        }
        opts.onProgress?.(length);
      }
    };
    await Promise.all(Array.from({ length: opts.inFlight ?? 16 }, worker));
    await fh.close();
    return result;
  } catch (err) {
    await fh.close().catch(() => undefined);
    await rm(outFile, { force: true }); // a partial copy is worth nothing: leave no half file
    throw err;
  }
}
