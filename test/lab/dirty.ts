// What a set of guest writes should make dirty: QEMU's backup bitmaps have a 64 KiB grain.

export const DIRTY_GRAIN = 64 * 1024;

/** Byte ranges [offset, length] a set of writes makes dirty, widened to the grain and merged. */
export function dirtyRanges(writes: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
  const spans = writes
    .map(([o, l]) => [Math.floor(o / DIRTY_GRAIN) * DIRTY_GRAIN, Math.ceil((o + l) / DIRTY_GRAIN) * DIRTY_GRAIN] as const)
    .sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  for (const [s, e] of spans) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] >= s) last[1] = Math.max(last[0] + last[1], e) - last[0];
    else out.push([s, e - s]);
  }
  return out;
}
