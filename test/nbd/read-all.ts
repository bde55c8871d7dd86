// Reads a whole export the way nbdcopy does: walk base:allocation, skip what it promises reads
// as zeros (NBD_STATE_ZERO; a HOLE without ZERO is still read), and keep a window of
// request-size reads in flight, each into a buffer from a small reused set.

import { VircptError } from '../../src/errors.js';
import { NBD_STATE_ZERO } from '../../src/nbd/constants.js';
import type { Extent } from '../../src/nbd/extents.js';

/** What readAll needs: an NbdClient or an NbdPool. */
export interface ReadableExport {
  readonly size: number;
  readonly requestSize: number;
  readonly contexts: ReadonlyMap<string, number>;
  read(offset: number, length: number, into?: Buffer, signal?: AbortSignal): Promise<Buffer>;
  blockStatus(context: string, offset: number, length: number, signal?: AbortSignal): AsyncIterable<Extent>;
}

export interface ReadAllOptions {
  /** Called for each piece read, in completion order; the buffer is reused once it settles. */
  onData?: (offset: number, data: Buffer) => void | Promise<void>;
  /** Called for each range skipped because it reads as zeros. */
  onZero?: (offset: number, length: number) => void | Promise<void>;
  /** Skip NBD_STATE_ZERO extents of base:allocation when the export has it (default true). */
  skipZero?: boolean;
  /** Reads in flight at once (default 16). */
  concurrency?: number;
  signal?: AbortSignal;
}

export interface ReadAllResult { bytesRead: number; bytesSkipped: number }

const BASE_ALLOCATION = 'base:allocation';

async function* wholeExport(source: ReadableExport, skipZero: boolean, signal?: AbortSignal): AsyncGenerator<Extent> {
  if (skipZero && source.contexts.has(BASE_ALLOCATION)) yield* source.blockStatus(BASE_ALLOCATION, 0, source.size, signal);
  else yield { offset: 0, length: source.size, flags: 0 };
}

export async function readAll(source: ReadableExport, options: ReadAllOptions = {}): Promise<ReadAllResult> {
  const concurrency = options.concurrency ?? 16;
  const step = source.requestSize;
  const free: Buffer[] = [];
  const inFlight = new Set<Promise<void>>();
  const result: ReadAllResult = { bytesRead: 0, bytesSkipped: 0 };
  let failure: unknown;

  const start = (offset: number, length: number) => {
    const buf = free.pop() ?? Buffer.allocUnsafe(step);
    const piece: Promise<void> = source.read(offset, length, buf, options.signal)
      .then(async (data) => { result.bytesRead += length; await options.onData?.(offset, data); })
      .catch((err: unknown) => { failure ??= err; })
      .finally(() => { free.push(buf); inFlight.delete(piece); });
    inFlight.add(piece);
  };

  for await (const extent of wholeExport(source, options.skipZero ?? true, options.signal)) {
    if (extent.flags & NBD_STATE_ZERO) {
      result.bytesSkipped += extent.length;
      await options.onZero?.(extent.offset, extent.length);
      continue;
    }
    // Pieces end on multiples of the request size, so they stay aligned wherever extents start.
    for (let at = extent.offset, end = extent.offset + extent.length; at < end;) {
      while (inFlight.size >= concurrency && failure === undefined) await Promise.race(inFlight);
      if (failure !== undefined) break;
      const next = Math.min(at - (at % step) + step, end);
      start(at, next - at);
      at = next;
    }
    if (failure !== undefined) break;
  }
  await Promise.all(inFlight);
  if (failure !== undefined) throw failure instanceof VircptError ? failure : new VircptError('IO', 'reading the export failed', { cause: failure });
  return result;
}
