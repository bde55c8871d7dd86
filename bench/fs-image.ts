// The benchmark's disk: 4 GiB with 1.5 GiB of data scattered in runs of random bytes and of
// fill patterns, holes between them. Built offline (a sparse raw file, then qemu-img convert,
// which leaves the holes unallocated), so that no guest write through QEMU is needed.
import { randomFillSync } from 'node:crypto';
import { open, rm } from 'node:fs/promises';
import { run, requireTools } from '../test/lab/tools.js';

const MiB = 1024 * 1024;
export const DISK_SIZE = 4096 * MiB;
export const DATA_SIZE = 1536 * MiB;
/** The disk is cut in slots; each holds the same amount of data in 1-4 runs at random places. */
const SLOT = 64 * MiB;
/** qcow2's default cluster: runs and holes aligned to it are really unallocated in the image. */
const UNIT = 64 * 1024;
const WRITE_CHUNK = 8 * MiB;
const SEED = 0x5eed_f00d;

export interface DataRun {
  offset: number;
  length: number;
  /** A fill byte (1-255), or 'random'. */
  fill: number | 'random';
}

/** mulberry32: a small seeded generator, so every run of the benchmark gets the same layout. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** `total` units cut into `parts` parts (each >= min), at random points. */
function split(rand: () => number, total: number, parts: number, min: number): number[] {
  const free = total - parts * min;
  const cuts = Array.from({ length: parts - 1 }, () => Math.floor(rand() * (free + 1))).sort((a, b) => a - b);
  const bounds = [0, ...cuts, free];
  return bounds.slice(1).map((b, i) => b - bounds[i]! + min);
}

/** Where the data goes: DATA_SIZE bytes in runs, in offset order, never touching each other. */
export function dataLayout(): DataRun[] {
  const rand = prng(SEED);
  const slots = DISK_SIZE / SLOT;
  const dataUnits = DATA_SIZE / slots / UNIT;
  const holeUnits = (SLOT - DATA_SIZE / slots) / UNIT;
  const runs: DataRun[] = [];
  for (let s = 0; s < slots; s++) {
    const n = 1 + Math.floor(rand() * 4);
    const lengths = split(rand, dataUnits, n, 1);
    // n + 1 gaps; the inner ones at least one unit, so that runs stay apart.
    const gaps = split(rand, holeUnits - (n - 1), n + 1, 0).map((g, i) => (i > 0 && i < n ? g + 1 : g));
    let pos = s * SLOT + gaps[0]! * UNIT;
    lengths.forEach((units, i) => {
      const fill = rand() < 0.5 ? 'random' : 1 + Math.floor(rand() * 255);
      runs.push({ offset: pos, length: units * UNIT, fill });
      pos += units * UNIT + gaps[i + 1]! * UNIT;
    });
  }
  return runs;
}

async function writeRaw(file: string, runs: DataRun[]): Promise<void> {
  const fh = await open(file, 'w', 0o644);
  try {
    await fh.truncate(DISK_SIZE);
    const buf = Buffer.allocUnsafe(WRITE_CHUNK);
    for (const r of runs) {
      for (let done = 0; done < r.length; done += WRITE_CHUNK) {
        const chunk = buf.subarray(0, Math.min(WRITE_CHUNK, r.length - done));
        if (r.fill === 'random') randomFillSync(chunk);
        else chunk.fill(r.fill);
        await fh.write(chunk, 0, chunk.length, r.offset + done);
      }
    }
  } finally {
    await fh.close();
  }
}

/** Writes the qcow2 image `out` (4 GiB, DATA_SIZE allocated); returns its layout. */
export async function buildImage(out: string): Promise<DataRun[]> {
  await requireTools('qemu-img');
  const runs = dataLayout();
  const raw = `${out}.raw`;
  try {
    await writeRaw(raw, runs);
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, out], { timeout: 600_000 });
  } finally {
    await rm(raw, { force: true });
  }
  return runs;
}

/** Bytes the image really allocates (qemu-img map): the check that holes stayed holes. */
export async function allocatedBytes(image: string): Promise<number> {
  const map = JSON.parse(await run('qemu-img', ['map', '-U', '--output=json', image])) as { length: number; data: boolean }[];
  return map.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
}
