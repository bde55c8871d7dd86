// dirty-map.json (DESIGN.md): per disk, the extents changed since a checkpoint, shaped like
// `nbdinfo --map --json` output (offset, length, type, description) so scripts carry over.
import type { Extent } from '../nbd/index.js';
import { NBD_STATE_DIRTY } from '../nbd/index.js';

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

/**
 * Extents covering [0, size) with no gap and no overlap: dirty (type 1) where the bitmap says so,
 * clean (type 0) elsewhere, neighbours of one type merged.
 */
export function toMapExtents(extents: readonly Extent[], size: number): MapExtent[] {
  const out: MapExtent[] = [];
  let pos = 0;
  const push = (offset: number, length: number, type: number) => {
    if (length <= 0) return;
    const last = out[out.length - 1];
    if (last && last.type === type && last.offset + last.length === offset) last.length += length;
    else out.push({ offset, length, type, description: type ? 'dirty' : 'clean' });
  };
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
