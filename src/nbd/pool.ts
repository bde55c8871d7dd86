// Several connections to one export, used only where the server sets NBD_FLAG_CAN_MULTI_CONN
// (proto.md: otherwise clients "SHOULD NOT multiplex their commands over more than one
// connection"). Same API as NbdClient; each piece of work goes to the least loaded connection.

import { VircptError } from '../errors.js';
import { NbdClient, checkRange, invalid, type NbdClientOptions } from './client.js';
import { closedError } from './errors.js';
import type { Extent } from './extents.js';
import type { BlockSize } from './handshake.js';
import { allPieces } from './pieces.js';

export interface NbdPoolOptions extends NbdClientOptions {
  /** Connections wanted (default 1); more than one only with CAN_MULTI_CONN. */
  connections?: number;
}

export class NbdPool {
  readonly clients: readonly NbdClient[];
  #closing: Promise<void> | undefined;

  static async connect(options: NbdPoolOptions): Promise<NbdPool> {
    const first = await NbdClient.connect(options);
    const extra = first.canMultiConn ? Math.max(0, (options.connections ?? 1) - 1) : 0;
    const results = await Promise.allSettled(Array.from({ length: extra }, () => NbdClient.connect(options)));
    const opened = [first, ...results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))];
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all(opened.map((c) => c.close()));
      throw failed.reason;
    }
    return new NbdPool(opened);
  }

  private constructor(clients: NbdClient[]) {
    this.clients = clients;
  }

  #first(): NbdClient { return this.clients[0]!; }
  get exportName(): string { return this.#first().exportName; }
  get size(): number { return this.#first().size; }
  get transmissionFlags(): number { return this.#first().transmissionFlags; }
  get readOnly(): boolean { return this.#first().readOnly; }
  get canMultiConn(): boolean { return this.#first().canMultiConn; }
  get blockSize(): Readonly<BlockSize> { return this.#first().blockSize; }
  /** Context names are the same on every connection; the ids are those of the first. */
  get contexts(): ReadonlyMap<string, number> { return this.#first().contexts; }
  get requestSize(): number { return this.#first().requestSize; }

  #leastLoaded(): NbdClient {
    if (this.#closing) throw closedError('NBD pool is closing');
    let best: NbdClient | undefined;
    for (const c of this.clients) {
      if (c.failure === undefined && (best === undefined || c.load < best.load)) best = c;
    }
    if (best === undefined) throw this.#first().failure ?? closedError('NBD pool has no live connection');
    return best;
  }

  /** As NbdClient.read, spread over the connections by request-size pieces. */
  async read(offset: number, length: number, into?: Buffer, signal?: AbortSignal): Promise<Buffer> {
    checkRange(offset, length, this.size);
    if (into !== undefined && into.length < length) throw invalid(`read buffer of ${into.length} bytes is shorter than ${length}`);
    const step = this.requestSize;
    if (this.clients.length === 1 || length <= step) return this.#leastLoaded().read(offset, length, into, signal);
    const dest = into === undefined ? Buffer.allocUnsafe(length) : into.subarray(0, length);
    await allPieces(signal, (group) => {
      const pieces: Promise<Buffer>[] = [];
      // Pieces end on multiples of the request size, so only the first and last may be unaligned.
      for (let at = offset; at < offset + length;) {
        const next = Math.min(at - (at % step) + step, offset + length);
        pieces.push(this.#leastLoaded().read(at, next - at, dest.subarray(at - offset, next - offset), group));
        at = next;
      }
      return pieces;
    });
    return dest;
  }

  async *blockStatus(context: string, offset: number, length: number, signal?: AbortSignal): AsyncGenerator<Extent> {
    yield* this.#leastLoaded().blockStatus(context, offset, length, signal);
  }

  close(): Promise<void> {
    return (this.#closing ??= Promise.all(this.clients.map((c) => c.close())).then(() => undefined));
  }

  destroy(error?: VircptError): void {
    this.#closing ??= Promise.resolve();
    for (const c of this.clients) c.destroy(error);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
