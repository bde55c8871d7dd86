// Turns NBD_CMD_BLOCK_STATUS answers into extents covering exactly [offset, offset+length):
// a short answer is followed by another request from where it stopped, a long one is clipped
// (proto.md "Metadata querying": the length is only a hint), neighbours with equal flags merge.

import { protocolError } from './errors.js';

export interface Extent { offset: number; length: number; flags: number }

/** Asks the server about [offset, offset+length); returns [length0, flags0, ...] from offset. */
export type BlockStatusQuery = (offset: number, length: number) => Promise<Uint32Array>;

export interface ExtentWalk {
  offset: number;
  length: number;
  /** Requests are aligned to this (the server's minimum block size). */
  alignment: number;
  /** Longest request (a u32 on the wire), a multiple of alignment. */
  maxRequest: number;
  /** The export size: requests never pass it. */
  size: number;
}

const alignDown = (n: number, a: number) => n - (n % a);
const alignUp = (n: number, a: number) => alignDown(n + a - 1, a);

export async function* walkExtents(query: BlockStatusQuery, walk: ExtentWalk): AsyncGenerator<Extent> {
  const end = walk.offset + walk.length;
  let pos = walk.offset;
  // Merged runs not yet yielded: the last one may still grow with the next answer.
  const runs: Extent[] = [];
  while (pos < end) {
    const start = alignDown(pos, walk.alignment);
    const stop = Math.min(start + walk.maxRequest, alignUp(end, walk.alignment), walk.size);
    const answer = await query(start, stop - start);
    let at = start;
    for (let i = 0; i < answer.length && at < end; i += 2) {
      const from = Math.max(at, pos);
      at += answer[i]!;
      const to = Math.min(at, end);
      if (to > from) appendRun(runs, { offset: from, length: to - from, flags: answer[i + 1]! }, sameFlags);
    }
    if (at <= pos) throw protocolError(`block status at ${start} made no progress past ${pos}`);
    pos = Math.min(at, end);
    yield* runs.splice(0, runs.length - 1);
  }
  yield* runs;
}

/** A run of bytes: an extent, a dirty-map.json entry. */
export interface Run { offset: number; length: number }

/**
 * The one run merger: appends `run` to `runs`, or lengthens the last run instead when `run`
 * starts where it ends and `same` says they are of one kind. Empty runs are dropped.
 */
export function appendRun<R extends Run>(runs: R[], run: R, same: (last: R, run: R) => boolean): void {
  if (run.length <= 0) return;
  const last = runs[runs.length - 1];
  if (last !== undefined && last.offset + last.length === run.offset && same(last, run)) last.length += run.length;
  else runs.push(run);
}

const sameFlags = (a: Extent, b: Extent) => a.flags === b.flags;

/** Merges adjacent extents with equal flags (for comparing lists from different sources). */
export function mergeExtents(extents: Iterable<Extent>): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) appendRun(out, { ...e }, sameFlags);
  return out;
}
