// Backpressure for requests in flight: a FIFO gate by count and by bytes. A request larger
// than the byte budget still passes when nothing else holds bytes, so it cannot starve.

import { VircptError } from '../errors.js';

interface Waiter { bytes: number; grant(): void; fail(error: Error): void }

export class Limiter {
  readonly #maxCount: number;
  readonly #maxBytes: number;
  #count = 0;
  #bytes = 0;
  #queuedBytes = 0;
  readonly #queue: Waiter[] = [];

  constructor(maxCount: number, maxBytes: number) {
    if (!(maxCount >= 1) || !(maxBytes >= 1)) throw new RangeError('limits must be at least 1');
    this.#maxCount = maxCount;
    this.#maxBytes = maxBytes;
  }

  /** Bytes held and waiting: what "least loaded" compares. */
  get load(): number { return this.#bytes + this.#queuedBytes; }
  get active(): number { return this.#count + this.#queue.length; }

  acquire(bytes: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortError(signal));
    if (this.#queue.length === 0 && this.#fits(bytes)) {
      this.#take(bytes);
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.#queue.indexOf(waiter);
        if (i >= 0) this.#queue.splice(i, 1);
        this.#queuedBytes -= bytes;
        reject(abortError(signal!));
        this.#pump(); // the head may have changed
      };
      const waiter: Waiter = {
        bytes,
        grant: () => { signal?.removeEventListener('abort', onAbort); resolve(); },
        fail: (error) => { signal?.removeEventListener('abort', onAbort); reject(error); },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#queue.push(waiter);
      this.#queuedBytes += bytes;
    });
  }

  release(bytes: number): void {
    this.#count -= 1;
    this.#bytes -= bytes;
    this.#pump();
  }

  /** Fails every waiter (the connection is gone). */
  rejectAll(error: Error): void {
    const waiters = this.#queue.splice(0);
    this.#queuedBytes = 0;
    for (const w of waiters) w.fail(error);
  }

  #fits(bytes: number): boolean {
    return this.#count < this.#maxCount && (this.#bytes + bytes <= this.#maxBytes || this.#bytes === 0);
  }

  #take(bytes: number): void {
    this.#count += 1;
    this.#bytes += bytes;
  }

  #pump(): void {
    while (this.#queue.length > 0 && this.#fits(this.#queue[0]!.bytes)) {
      const waiter = this.#queue.shift()!;
      this.#queuedBytes -= waiter.bytes;
      this.#take(waiter.bytes);
      waiter.grant();
    }
  }
}

function abortError(signal: AbortSignal): VircptError {
  return new VircptError('ABORTED', 'NBD request aborted', { cause: signal.reason });
}
