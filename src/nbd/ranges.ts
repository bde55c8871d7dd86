// Small range helpers for checking the chunks of one reply against each other.

import { NBD_CMD_BLOCK_STATUS, NBD_CMD_READ } from './constants.js';

const COMMAND_NAMES: Record<number, string> = {
  [NBD_CMD_READ]: 'NBD_CMD_READ',
  [NBD_CMD_BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
};

export function describeRequest(r: { command: number; offset: number; length: number }): string {
  return `${COMMAND_NAMES[r.command] ?? `command ${r.command}`} ${r.length}@${r.offset}`;
}

/**
 * Adds [start, end) to a sorted list of disjoint ranges stored flat as [s0, e0, s1, e1, ...],
 * merging touching neighbours. Returns false, changing nothing, when it overlaps one.
 * Chunks usually arrive in order, so the common case appends in O(1).
 */
export function addRange(ranges: number[], start: number, end: number): boolean {
  const n = ranges.length;
  if (n === 0 || start >= ranges[n - 1]!) {
    if (n > 0 && start === ranges[n - 1]) ranges[n - 1] = end;
    else ranges.push(start, end);
    return true;
  }
  let i = 0;
  while (ranges[i + 1]! <= start) i += 2; // first range ending after start
  if (ranges[i]! < end) return false;
  const touchesPrevious = i > 0 && ranges[i - 1] === start;
  const touchesNext = ranges[i] === end;
  if (touchesPrevious && touchesNext) {
    ranges[i - 1] = ranges[i + 1]!;
    ranges.splice(i, 2);
  } else if (touchesPrevious) {
    ranges[i - 1] = end;
  } else if (touchesNext) {
    ranges[i] = start;
  } else {
    ranges.splice(i, 0, start, end);
  }
  return true;
}

export function coversExactly(ranges: readonly number[], offset: number, length: number): boolean {
  return ranges.length === 2 && ranges[0] === offset && ranges[1] === offset + length;
}
