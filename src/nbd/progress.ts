// What the chunks of one structured reply have said so far, checked against its request
// (proto.md "Structured reply types"): content inside the request and never overlapping,
// one status chunk per context, and at the end either an error or the whole range covered.

import { NBD_CMD_BLOCK_STATUS, NBD_CMD_READ } from './constants.js';
import type { VircptError } from '../errors.js';

const COMMAND_NAMES: Record<number, string> = {
  [NBD_CMD_READ]: 'NBD_CMD_READ',
  [NBD_CMD_BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
};

export interface RequestRange { readonly command: number; readonly offset: number; readonly length: number }

export function describeRequest(r: RequestRange): string {
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

export class ReplyProgress {
  readonly #request: RequestRange;
  readonly #ranges: number[] = [];
  readonly #contexts = new Set<number>();
  error: VircptError | undefined;

  constructor(request: RequestRange) {
    this.#request = request;
  }

  /** Claims a content chunk's range; returns why it is not allowed, if it is not. */
  claim(offset: number, length: number, kind: string): string | undefined {
    const r = this.#request;
    if (offset < r.offset || offset + length > r.offset + r.length) return `${kind} ${length}@${offset} outside ${describeRequest(r)}`;
    if (!addRange(this.#ranges, offset, offset + length)) return `${kind} ${length}@${offset} overlaps an earlier chunk of ${describeRequest(r)}`;
    return undefined;
  }

  /** Records a status chunk for a context; returns why it is not allowed, if it is not. */
  claimContext(id: number, negotiated: ReadonlySet<number>): string | undefined {
    if (!negotiated.has(id)) return `block status for unknown context id ${id}`;
    if (this.#contexts.has(id)) return `two block status chunks for context id ${id}`;
    this.#contexts.add(id);
    return undefined;
  }

  /** At the final chunk: returns what is missing from a reply that claims success. */
  incomplete(negotiated: ReadonlySet<number>): string | undefined {
    if (this.error !== undefined) return undefined;
    const r = this.#request;
    // proto.md: with no error "the server MUST send enough data chunks to cover the entire
    // region", and "exactly one status chunk per negotiated metadata context ID".
    const covered = this.#ranges.length === 2 && this.#ranges[0] === r.offset && this.#ranges[1] === r.offset + r.length;
    if (r.command === NBD_CMD_READ && !covered) return `reply to ${describeRequest(r)} does not cover it`;
    if (r.command === NBD_CMD_BLOCK_STATUS && this.#contexts.size !== negotiated.size) return `reply to ${describeRequest(r)} lacks a meta context`;
    return undefined;
  }
}
