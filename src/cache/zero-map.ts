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
    const list = this.#extents;
    let lo = 0;
    let hi = list.length - 1;
    let found = -1; // the last extent that starts at or before `start`
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid]!.offset <= start) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    if (found < 0) return false;
    const e = list[found]!;
    return end <= e.offset + e.length;
  }
}
