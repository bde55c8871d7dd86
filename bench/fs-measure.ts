// What the benchmark times: the ways a user reads a disk file (dd, cat, cp, parallel dd on
// quarters, a warm re-read), each as real processes, with the page cache dropped before a cold
// run, plus the serving process's CPU time and peak RSS from /proc, and open() to first byte.
import { randomBytes } from 'node:crypto';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Subject } from './fs-subjects.js';

const MiB = 1024 * 1024;
export const FIRST_READ = 4096;

export type TestName = 'dd' | 'cat' | 'cp' | 'parallel' | 'reread';
export const COLD_TESTS: readonly TestName[] = ['dd', 'cat', 'cp', 'parallel'];
export const PARALLEL_READERS = 4;

export interface Sample {
  seconds: number;
  /** CPU seconds the serving process spent during the run. */
  cpu: number;
  /** CPU seconds its NBD server spent (subjects with a peerPid only). */
  peerCpu?: number;
}

/** Page cache, dentries and inodes dropped (proc(5) drop_caches), after writing back dirty pages. */
export async function dropCaches(): Promise<void> {
  await execa('sync');
  await writeFile('/proc/sys/vm/drop_caches', '3\n');
}

let clockTicks: number | undefined;

/** User and system CPU seconds from a proc(5) stat file (/proc/PID/stat, /proc/PID/task/TID/stat):
 *  utime and stime (fields 14, 15), or with `children` cutime and cstime (16, 17: waited-for children). */
export async function statCpu(statFile: string, children = false): Promise<{ user: number; sys: number }> {
  clockTicks ??= Number((await execa('getconf', ['CLK_TCK'])).stdout.trim()) || 100;
  const stat = await readFile(statFile, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // the name may hold blanks
  const i = children ? 13 : 11; // fields counted from 1, the first two cut off
  return { user: Number(fields[i]) / clockTicks, sys: Number(fields[i + 1]) / clockTicks };
}

/** utime + stime of a process in seconds. */
export async function cpuSeconds(pid: number): Promise<number> {
  const { user, sys } = await statCpu(`/proc/${pid}/stat`);
  return user + sys;
}

/** A field of /proc/PID/status in KiB (VmHWM: peak resident set size). */
export async function statusKiB(pid: number, field: string): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

function dd(file: string, extra: string[] = []): Promise<unknown> {
  return execa('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M', ...extra]);
}

/** Runs one test on the file; only the reading is timed (cp's output is removed afterwards). */
async function runTest(test: TestName, file: string, size: number, outDir: string): Promise<number> {
  const t0 = performance.now();
  switch (test) {
    case 'dd':
    case 'reread':
      await dd(file);
      break;
    case 'cat':
      await execa('sh', ['-c', 'cat -- "$1" > /dev/null', 'sh', file]);
      break;
    case 'cp': {
      const out = path.join(outDir, `cp-${randomBytes(4).toString('hex')}.raw`);
      try {
        await execa('cp', ['--sparse=always', file, out]);
        const t = performance.now() - t0;
        return t / 1000;
      } finally {
        await rm(out, { force: true });
      }
    }
    case 'parallel': {
      const quarter = size / PARALLEL_READERS / MiB;
      await Promise.all(Array.from({ length: PARALLEL_READERS }, (_, i) =>
        dd(file, [`skip=${i * quarter}`, `count=${quarter}`])));
      break;
    }
  }
  return (performance.now() - t0) / 1000;
}

export async function measure(subject: Subject, test: TestName, size: number, outDir: string, cold: boolean): Promise<Sample> {
  if (cold) await dropCaches();
  const peer = subject.peerPid;
  const cpu0 = await cpuSeconds(subject.pid);
  const peer0 = peer === undefined ? 0 : await cpuSeconds(peer);
  const seconds = await runTest(test, subject.file, size, outDir);
  const cpu = (await cpuSeconds(subject.pid)) - cpu0;
  return peer === undefined ? { seconds, cpu } : { seconds, cpu, peerCpu: (await cpuSeconds(peer)) - peer0 };
}

export interface FirstByte {
  /** open() returned. */
  openMs: number;
  /** open() to the first FIRST_READ bytes in hand. */
  totalMs: number;
}

/** open() + read of the first 4 KiB of a file, timed from the call to open(). */
export async function firstByte(file: string): Promise<FirstByte> {
  const t0 = performance.now();
  const fh = await open(file, 'r');
  const t1 = performance.now();
  try {
    const { bytesRead } = await fh.read(Buffer.alloc(FIRST_READ), 0, FIRST_READ, 0);
    if (bytesRead !== FIRST_READ) throw new Error(`${file}: first read returned ${bytesRead} bytes`);
    return { openMs: t1 - t0, totalMs: performance.now() - t0 };
  } finally {
    await fh.close();
  }
}

export function best(xs: readonly number[]): number {
  return Math.min(...xs);
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
