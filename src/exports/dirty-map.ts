// dirty-map.json (docs/design.md): per disk, the extents changed since a checkpoint, shaped like
// `nbdinfo --map --json` output (offset, length, type, description) so scripts carry over.
import { appendRun, type Extent } from '../nbd/extents.js';
import { NBD_STATE_DIRTY } from '../nbd/constants.js';

export interface MapExtent {
  offset: number;
  length: number;
  type: number;
  description: string;
}

export interface DirtyMap {
  domain: string;
  checkpoint: string;
  exportedAt: string;
  disks: Record<string, { size: number; extents: MapExtent[] }>;
}

/** Neighbours in dirty-map.json merge when of one type. */
export const sameType = (a: MapExtent, b: MapExtent) => a.type === b.type;

/**
 * Extents covering [0, size) with no gap and no overlap: dirty (type 1) where the bitmap says so,
 * clean (type 0) elsewhere, neighbours of one type merged.
 */
export function toMapExtents(extents: readonly Extent[], size: number): MapExtent[] {
  const out: MapExtent[] = [];
  let pos = 0;
  const push = (offset: number, length: number, type: number) =>
    appendRun(out, { offset, length, type, description: type ? 'dirty' : 'clean' }, sameType);
  for (const e of extents) {
    const start = Math.max(e.offset, pos);
    const end = Math.min(e.offset + e.length, size);
    if (start > pos) push(pos, start - pos, 0);
    push(start, end - start, e.flags & NBD_STATE_DIRTY ? 1 : 0);
    pos = Math.max(pos, end);
  }
  push(pos, size - pos, 0);
  return out;
}

export function renderDirtyMap(map: DirtyMap): Buffer {
  return Buffer.from(`${JSON.stringify(map, null, 2)}\n`);
}
