// The benchmark's printout: MB/s of each way of reading, the ratios vircptfs/nbdfuse and
// vircptfs/QEMU, vircptfs's peak RSS and first-byte latency, and the targets met or not.
import { best, median, type Sample, type TestName } from './fs-measure.js';
import { NBDFUSE, QEMU, VIRCPTFS } from './fs-subjects.js';

const MiB = 1024 * 1024;
const MB = 1e6;


export interface Results {
  size: number;
  dataBytes: number;
  runs: number;
  /** subject name -> test -> samples. */
  samples: Map<string, Map<TestName, Sample[]>>;
  rssKiB: number;
  cacheBytes: number;
  firstByteMs: number[];
  firstOpenMs: number[];
  backupBeginMs: number[];
  dataCheck: string;
  load: { start: string; end: string };
  /** The TLS rows' lines (fs-tls.ts), empty without them. */
  tls: string[];
}

const ROWS: readonly [TestName, string][] = [
  ['dd', 'dd bs=1M (cold)'],
  ['cat', 'cat (cold)'],
  ['cp', 'cp --sparse=always (cold)'],
  ['parallel', '4 x dd on quarters (cold)'],
  ['reread', 're-read dd bs=1M (warm)'],
];

/** Targets from the issue: a test's vircptfs/nbdfuse throughput ratio must reach `min`. */
const RATIO_TARGETS: readonly [TestName, number][] = [['dd', 1.5], ['cat', 1.5], ['cp', 1.5], ['parallel', 1.0], ['reread', 3]];
const RSS_SLACK = 150 * MiB;
const FIRST_BYTE_SLACK_MS = 100;

function seconds(r: Results, subject: string, test: TestName): number[] {
  return (r.samples.get(subject)?.get(test) ?? []).map((s) => s.seconds);
}

/** Best and median throughput in MB/s (10^6 bytes/s, like dd), from the best and median times. */
function rates(r: Results, subject: string, test: TestName): { best: number; median: number } | undefined {
  const t = seconds(r, subject, test);
  return t.length === 0 ? undefined : { best: r.size / MB / best(t), median: r.size / MB / median(t) };
}

function ratio(r: Results, test: TestName, other: string): number | undefined {
  const a = rates(r, VIRCPTFS, test);
  const b = rates(r, other, test);
  return a && b ? a.best / b.best : undefined;
}

const pad = (s: string, n: number) => s.padEnd(n);
const lpad = (s: string, n: number) => s.padStart(n);
const fmt = (x: number | undefined, digits = 0) => (x === undefined ? '-' : x.toFixed(digits));

function table(r: Results): string[] {
  const subjects = [VIRCPTFS, NBDFUSE, QEMU];
  const head = pad('test', 27) + subjects.map((s) => lpad(s, 18)).join('') + lpad('vs nbdfuse', 12) + lpad('vs QEMU', 9);
  const lines = [head, '-'.repeat(head.length)];
  for (const [test, label] of ROWS) {
    const cells = subjects.map((s) => {
      const x = rates(r, s, test);
      return lpad(x ? `${fmt(x.best)} (${fmt(x.median)})` : '-', 18);
    });
    lines.push(pad(label, 27) + cells.join('') + lpad(`${fmt(ratio(r, test, NBDFUSE), 2)} x`, 12) + lpad(`${fmt(ratio(r, test, QEMU), 2)} x`, 9));
  }
  lines.push('', `${pad('seconds, best (median), server CPU s', 27)}${subjects.map((s) => lpad(s, 22)).join('')}`);
  for (const [test, label] of ROWS) {
    const cells = subjects.map((s) => {
      const t = seconds(r, s, test);
      const cpu = (r.samples.get(s)?.get(test) ?? []).map((x) => x.cpu);
      return lpad(t.length ? `${fmt(best(t), 2)} (${fmt(median(t), 2)}) ${fmt(median(cpu), 1)}` : '-', 22);
    });
    lines.push(pad(label, 27) + cells.join(''));
  }
  return lines;
}

function verdict(ok: boolean): string {
  return ok ? 'met' : 'NOT MET';
}

function targets(r: Results): string[] {
  const out: string[] = [];
  for (const [test, min] of RATIO_TARGETS) {
    const x = ratio(r, test, NBDFUSE);
    const label = ROWS.find(([t]) => t === test)![1];
    out.push(`  ${pad(label, 27)} >= ${min.toFixed(1)} x nbdfuse: ${fmt(x, 2)} x  ${verdict(x !== undefined && x >= min)}`);
  }
  const limit = r.cacheBytes + RSS_SLACK;
  out.push(`  ${pad('peak RSS', 27)} <= ${limit / MiB} MiB (cache ${r.cacheBytes / MiB} MiB + 150): ` +
    `${fmt(r.rssKiB / 1024)} MiB  ${verdict(r.rssKiB * 1024 <= limit)}`);
  const fb = best(r.firstByteMs);
  const begin = best(r.backupBeginMs);
  out.push(`  ${pad('open to first byte', 27)} <= backup-begin + ${FIRST_BYTE_SLACK_MS} ms = ${fmt(begin + FIRST_BYTE_SLACK_MS)} ms: ` +
    `${fmt(fb)} ms  ${verdict(fb <= begin + FIRST_BYTE_SLACK_MS)}`);
  return out;
}

export function report(r: Results): string {
  const list = (xs: number[]) => xs.map((x) => fmt(x)).join(', ');
  return [
    '',
    `vircptfs file-read benchmark: ${r.size / MiB / 1024} GiB file, ${r.dataBytes / MiB} MiB data, best of ${r.runs} (median)`,
    `load average at start: ${r.load.start}; at end: ${r.load.end}`,
    `MB/s = 10^6 bytes/s over the whole file (holes included); page cache dropped before each cold run`,
    '',
    ...table(r),
    '',
    `vircptfs peak RSS (VmHWM): ${fmt(r.rssKiB / 1024)} MiB, block cache ${r.cacheBytes / MiB} MiB`,
    `open + read 4 KiB of a fresh export (after the idle release): best ${fmt(best(r.firstByteMs))} ms, ` +
      `median ${fmt(median(r.firstByteMs))} ms [${list(r.firstByteMs)}]; of which open(): [${list(r.firstOpenMs)}]`,
    `virsh backup-begin alone: best ${fmt(best(r.backupBeginMs))} ms, median ${fmt(median(r.backupBeginMs))} ms [${list(r.backupBeginMs)}]`,
    `data check: ${r.dataCheck}`,
    '',
    'targets (ratios of best throughput):',
    ...targets(r),
    '',
    ...(r.tls.length > 0 ? [...r.tls, ''] : []),
  ].join('\n');
}
