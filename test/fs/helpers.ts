// What the filesystem tests share: checkpoints made with virsh, reference images, errno checks,
// dirty-map expectations at the bitmap's 64 KiB grain, and waiting for a release.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { virsh, type LabVm } from '../lab/lab.js';
import { imageToRaw } from '../lab/images.js';
import { leftoversOf } from '../lab/leftovers.js';
export { DIRTY_GRAIN, dirtyRanges } from '../lab/dirty.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** mount.ts mounts with attr_timeout=1: the kernel keeps a file's attributes that long. */
export const ATTR_TIMEOUT_MS = 1100;

export interface MapExtent { offset: number; length: number; type: number; description: string }
export interface DirtyMapJson {
  domain: string;
  checkpoint: string;
  exportedAt: string;
  disks: Record<string, { size: number; extents: MapExtent[] }>;
}

export async function checkpoint(vm: LabVm, name: string): Promise<void> {
  await virsh('checkpoint-create-as', vm.name, name);
}

/** The guest-visible bytes of a disk right now (the VM is paused: nothing changes them). */
export async function reference(vm: LabVm, target: string, dir: string, tag = ''): Promise<Buffer> {
  const out = path.join(dir, `${vm.name}-${target}${tag}.raw`);
  await imageToRaw(vm.image(target), out);
  return readFile(out);
}

/** Asserts that `p` rejects with the given errno code (EROFS, ENOENT, EBUSY, EIO). */
export async function rejectsWith(p: Promise<unknown>, code: string, what: string): Promise<void> {
  await assert.rejects(p, (err: NodeJS.ErrnoException) => {
    assert.equal(err.code, code, `${what}: ${err.message}`);
    return true;
  }, `${what} should fail with ${code}`);
}

/** Extents cover [0, size) in order, no gap, no overlap, neighbours of one type merged. */
export function assertCovers(extents: readonly MapExtent[], size: number, what: string): void {
  let pos = 0;
  for (const [i, e] of extents.entries()) {
    assert.equal(e.offset, pos, `${what}: extent ${i} starts at ${e.offset}, expected ${pos}`);
    assert.ok(e.length > 0, `${what}: extent ${i} is empty`);
    assert.equal(e.description, e.type === 1 ? 'dirty' : 'clean', `${what}: extent ${i} description`);
    if (i > 0) assert.notEqual(e.type, extents[i - 1]!.type, `${what}: extents ${i - 1} and ${i} not merged`);
    pos += e.length;
  }
  assert.equal(pos, size, `${what}: extents end at ${pos}, disk is ${size}`);
}

export function dirtyOf(extents: readonly MapExtent[]): Array<[number, number]> {
  return extents.filter((e) => e.type === 1).map((e) => [e.offset, e.length]);
}

/** Waits until the domain has no job and nothing of ours is left for it (an export released). */
export async function waitReleased(vm: LabVm, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const running = (await vm.state()) !== 'shut off';
  for (;;) {
    // Our folders go last (after the job ended or qemu-nbd exited): look at them first.
    const left = await leftoversOf(vm.name);
    const job = left.length === 0 && running ? await vm.jobType() : 'None';
    if (job === 'None' && left.length === 0) return;
    if (Date.now() > deadline) assert.fail(`${vm.name}: export not released after ${timeoutMs} ms (job ${job}, left ${left.join(' ')})`);
    await sleep(200);
  }
}

/** Whether something of ours serves the domain now: a job (running) or our folders (qemu-nbd). */
export async function exported(vm: LabVm): Promise<boolean> {
  if ((await vm.state()) !== 'shut off' && (await vm.jobType()) !== 'None') return true;
  return (await leftoversOf(vm.name)).length > 0;
}

/** First differing offset of two buffers, for messages. */
export function firstDiff(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i += 4096) {
    const e = Math.min(n, i + 4096);
    if (!a.subarray(i, e).equals(b.subarray(i, e))) {
      for (let j = i; j < e; j++) if (a[j] !== b[j]) return j;
    }
  }
  return a.length === b.length ? -1 : n;
}

export function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  if (actual.equals(expected)) return;
  assert.fail(`${what}: ${actual.length} bytes vs ${expected.length} expected, first difference at ${firstDiff(actual, expected)}`);
}
