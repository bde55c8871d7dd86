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
  let pending: Extent | undefined;
  while (pos < end) {
    const start = alignDown(pos, walk.alignment);
    const stop = Math.min(start + walk.maxRequest, alignUp(end, walk.alignment), walk.size);
    const answer = await query(start, stop - start);
    let at = start;
    for (let i = 0; i < answer.length && at < end; i += 2) {
      const from = Math.max(at, pos);
      at += answer[i]!;
      const to = Math.min(at, end);
      if (to <= from) continue;
      const flags = answer[i + 1]!;
      if (pending !== undefined && pending.flags === flags && pending.offset + pending.length === from) {
        pending.length += to - from;
      } else {
        if (pending !== undefined) yield pending;
        pending = { offset: from, length: to - from, flags };
      }
    }
    if (at <= pos) throw protocolError(`block status at ${start} made no progress past ${pos}`);
    pos = Math.min(at, end);
  }
  if (pending !== undefined) yield pending;
}

/** Merges adjacent extents with equal flags (for comparing lists from different sources). */
export function mergeExtents(extents: Iterable<Extent>): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const last = out[out.length - 1];
    if (last !== undefined && last.flags === e.flags && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}
