// The ranges of a source known to read as zeros, sorted and merged so that one binary search
// answers "is [start, end) all zeros?".
import type { Extent } from './types.js';

export class ZeroMap {
  static readonly EMPTY = new ZeroMap([]);

  /** Sorted by offset, no overlap, adjacent ranges merged. */
  readonly #extents: readonly Extent[];

  private constructor(extents: Extent[]) {
    this.#extents = extents;
  }

  /** Clips `extents` to [0, size), drops empty or malformed ones, sorts and merges the rest. */
  static from(extents: readonly Extent[], size: number): ZeroMap {
    const clipped: Extent[] = [];
    for (const { offset, length } of extents) {
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) continue;
      const start = Math.max(0, offset);
      const end = Math.min(size, offset + length);
      if (end > start) clipped.push({ offset: start, length: end - start });
    }
    clipped.sort((a, b) => a.offset - b.offset);
    const merged: Extent[] = [];
    for (const e of clipped) {
      const last = merged.at(-1);
      if (last && e.offset <= last.offset + last.length) {
        last.length = Math.max(last.length, e.offset + e.length - last.offset);
      } else {
        merged.push({ ...e });
      }
    }
    return new ZeroMap(merged);
  }

  get extents(): readonly Extent[] {
    return this.#extents;
  }

  /** True when every byte of [start, end) lies in one zero extent. */
  covers(start: number, end: number): boolean {
    const e = this.#extents[this.#lastAtOrBefore(start)];
    return e !== undefined && end <= e.offset + e.length;
  }

  /**
   * lseek(2) SEEK_DATA over a source of `size` bytes whose zero extents count as holes: the
   * first offset at or after `offset` outside them, or -1 (ENXIO) when there is none.
   */
  nextData(offset: number, size: number): number {
    if (offset >= size) return -1;
    const e = this.#extents[this.#lastAtOrBefore(offset)];
    // Extents are merged, so the end of the one holding `offset` is data (or the end).
    const at = e !== undefined && offset < e.offset + e.length ? e.offset + e.length : offset;
    return at < size ? at : -1;
  }

  /** lseek(2) SEEK_HOLE: the first offset at or after `offset` in a zero extent, or `size`
   *  (the end of a file counts as a hole); -1 (ENXIO) when `offset` is past the end. */
  nextHole(offset: number, size: number): number {
    if (offset >= size) return -1;
    const i = this.#lastAtOrBefore(offset);
    const e = this.#extents[i];
    if (e !== undefined && offset < e.offset + e.length) return offset;
    const next = this.#extents[i + 1];
    return next !== undefined ? Math.min(next.offset, size) : size;
  }

  /** Index of the last extent that starts at or before `at` (-1 when none does). */
  #lastAtOrBefore(at: number): number {
    const list = this.#extents;
    let lo = 0;
    let hi = list.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid]!.offset <= at) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }
}
