// Buffers of evicted blocks, reused by new fetches. A fresh 1 MiB Buffer per fetched block costs
// a cold sequential read much of its CPU (allocation, page faults, GC; docs/benchmarks.md); with
// recycling the cache's memory mostly stays the same pages.
//
// Why reuse is safe. A buffer comes back here only through lru-cache's dispose, that is only
// from a block that was stored in the cache and then evicted, deleted (invalidate) or cleared.
// Who can still touch such a buffer?
//  - The source: no. Only a fetch that succeeded is stored, and a read resolves after its last
//    byte landed. A failed fetch is never stored (its buffer is dropped: an NBD piece abandoned
//    after a sibling failed may still write into it). A fetch whose entry was evicted or
//    deleted while in flight is handed to its waiting readers but not stored (ignoreFetchAbort),
//    so it is never disposed either.
//  - Readers that already hold the Block: BlockCache.read copies each piece in a reaction to its
//    own block promise, nothing but microtasks after the block resolved (or was found), never
//    after a wait on anything else. A block can be disposed before those microtasks ran:
//    another fetch settling evicts it, or even the same read's later misses, inserted by its
//    own synchronous lookup loop. And a source may write into a buffer at once (a file source
//    from a libuv worker thread, a memory source inside read()). So give() does not make the
//    buffer reusable at once: it is quarantined until a setImmediate callback, which runs only
//    after the microtask queue of the macrotask that disposed it has drained, and with it
//    every such copy. No reader can get the Block later: once disposed, it is not in the cache.
//    (test/cache/recycling.unit.test.ts fails without the quarantine, or with copies after
//    Promise.all of all pieces, or with copies after an abort.)
//  - Readers that gave up (abort) or failed: they copy nothing once read() has settled.
// Only buffers of exactly `size` bytes with an ArrayBuffer of their own are kept (the short last
// block of a source is not), so the cache's byte count stays what it holds. The pool holds at
// most `capacity` bytes, quarantine included, and lets go of them when no fetch took one for
// `idleMs` (default 2 s): it holds only what was evicted recently.

const IDLE_MS = 2000;

export class BufferPool {
  /** Bytes of every buffer (the cache's block size). */
  readonly size: number;
  readonly #capacity: number;
  readonly #idleMs: number;
  #free: Buffer[] = [];
  #quarantine: Buffer[] = [];
  /** Every buffer in #free or #quarantine: a buffer given twice is kept once. */
  readonly #held = new Set<ArrayBufferLike>();
  #flush: NodeJS.Immediate | undefined;
  #idle: NodeJS.Timeout | undefined;
  #takenSinceTick = false;
  allocated = 0;
  reused = 0;

  /** `capacityBytes` 0 turns recycling off (every take() allocates). */
  constructor(size: number, capacityBytes: number, idleMs = IDLE_MS) {
    this.size = size;
    this.#capacity = Math.floor(capacityBytes / size);
    this.#idleMs = idleMs;
  }

  /** Bytes held now, quarantined ones included. */
  get bytes(): number {
    return this.#held.size * this.size;
  }

  /** A buffer of `size` bytes with arbitrary contents: a recycled one, or a new one. */
  take(): Buffer {
    const buf = this.#free.pop();
    if (buf) {
      this.#held.delete(buf.buffer);
      this.#takenSinceTick = true;
      this.reused++;
      return buf;
    }
    this.allocated++;
    // allocUnsafeSlow: a buffer of its own, never a slice of Node's shared pool, so the bytes
    // the cache accounts for are the bytes it holds.
    return Buffer.allocUnsafeSlow(this.size);
  }

  /** Offers the buffer of a block that left the cache; reusable after the current macrotask. */
  give(buf: Buffer): void {
    if (buf.length !== this.size || buf.byteOffset !== 0 || buf.buffer.byteLength !== this.size) return;
    if (this.#held.size >= this.#capacity || this.#held.has(buf.buffer)) return;
    this.#held.add(buf.buffer);
    this.#quarantine.push(buf);
    this.#flush ??= setImmediate(() => this.#release());
  }

  /** Lets go of every buffer held (they are garbage once their last reader is done). */
  drain(): void {
    if (this.#flush) clearImmediate(this.#flush);
    if (this.#idle) clearTimeout(this.#idle);
    this.#flush = this.#idle = undefined;
    this.#free = [];
    this.#quarantine = [];
    this.#held.clear();
  }

  #release(): void {
    this.#flush = undefined;
    for (const buf of this.#quarantine) this.#free.push(buf);
    this.#quarantine = [];
    this.#idle ??= setTimeout(() => this.#tick(), this.#idleMs).unref();
  }

  #tick(): void {
    this.#idle = undefined;
    if (!this.#takenSinceTick) {
      for (const buf of this.#free) this.#held.delete(buf.buffer);
      this.#free = [];
    }
    this.#takenSinceTick = false;
    if (this.#held.size > 0) this.#idle = setTimeout(() => this.#tick(), this.#idleMs).unref();
  }
}
