// The soak's figures: one sample per interval (throughput, the daemon's RSS and its live libuv
// resources), and "flat": the mean of the last third within 10% of the mean of the first.
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Sample {
  /** Seconds since the soak began, at the interval's end. */
  at: number;
  /** Verified bytes read in the interval, per second. */
  mbPerS: number;
  /** The same bytes per CPU-second the daemon used in the interval: what the daemon's own work
   *  costs, which other load on the machine does not change as it changes wall time. */
  mbPerCpuS: number;
  rssMiB: number;
  /** The daemon's active handles, requests and timers (process.getActiveResourcesInfo()): the
   *  least of the counts taken during the interval. */
  resources: number;
  /** The kinds of that least count (Timeout:2 PipeWrap:3 ...). */
  kinds: string;
  /** Exports started so far, over both domains. */
  exports: number;
}

export interface Flatness {
  first: number;
  last: number;
  /** last / first. */
  ratio: number;
  flat: boolean;
}

/**
 * Slack for the resource count: it is a small number, and a virsh shell's pipes (4) come and go
 * with the shell, two of them between samples; a leak (a socket, a timer per export) exceeds it
 * within a minute of the soak's ~20 exports.
 */
export const RESOURCE_SLACK = 8;

/** Resources are flat when the last third is within 10% (+ RESOURCE_SLACK) of the first. */
export function resourcesFlat(f: Flatness): boolean {
  return f.last <= f.first * 1.1 + RESOURCE_SLACK;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

/** First third vs last third of a series (at least one sample each). */
export function flatness(series: number[], tolerance = 0.1): Flatness {
  const n = Math.max(1, Math.floor(series.length / 3));
  const first = mean(series.slice(0, n));
  const last = mean(series.slice(-n));
  const ratio = first === 0 ? (last === 0 ? 1 : Infinity) : last / first;
  return { first, last, ratio, flat: Math.abs(ratio - 1) <= tolerance };
}

/** CPU seconds (user + system) the process used so far (USER_HZ is 100 on Linux). */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

export async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

/**
 * Asks the daemon for its stats line (SIGUSR2 writes one to its log) and waits for it; returns
 * its resource count. `log` gives the daemon's log so far.
 */
export async function daemonResources(pid: number, log: () => string, timeoutMs = 10_000): Promise<{ count: number; kinds: string }> {
  const count = () => log().split('stats: rss=').length;
  const before = count();
  process.kill(pid, 'SIGUSR2');
  const deadline = Date.now() + timeoutMs;
  while (count() === before) {
    if (Date.now() > deadline) throw new Error(`the daemon (pid ${pid}) wrote no stats line within ${timeoutMs} ms`);
    await sleep(20);
  }
  const last = [...log().matchAll(/stats: rss=\d+ .* resources=(\d+) \(([^)]*)\)/g)].at(-1);
  return { count: Number(last?.[1]), kinds: last?.[2] ?? '?' };
}

export function formatSample(s: Sample, label: string): string {
  return `${label}: ${s.mbPerS.toFixed(1)} MB/s verified (${s.mbPerCpuS.toFixed(0)} MB per daemon CPU-second), daemon RSS ${s.rssMiB.toFixed(1)} MiB, ` +
    `${s.resources} libuv resources (${s.kinds}), ${s.exports} exports so far`;
}

export function formatFlat(name: string, f: Flatness, unit: string): string {
  return `${name}: first third ${f.first.toFixed(1)}${unit}, last third ${f.last.toFixed(1)}${unit} ` +
    `(x${f.ratio.toFixed(3)}): ${f.flat ? 'flat' : 'NOT flat'}`;
}
