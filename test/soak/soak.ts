// The soak: a real mount read for minutes by readers over 2 domains x 2 disks, random offsets and
// sizes, every byte checked; each domain's exports released (idle=1) and started again over and
// over, with guest writes between them, so each export is a new point in time whose content the
// soak knows. Per domain, phases alternate: readers open, read and close files; then they stop,
// the export is released, and the soak makes one guest write (HMP qemu-io) of a recorded
// pattern. The next phase's open starts a new export, which must show that write.
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lab, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { mountFs, type FsMount } from '../lab/mount.js';
import { run } from '../lab/tools.js';
import { checkpoint, firstDiff, MiB, waitReleased } from '../fs/helpers.js';
import { cpuSeconds, daemonResources, formatSample, rssMiB, type Sample } from './figures.js';

export interface SoakOptions {
  durationMs: number;
  /** One sample per interval (a minute for the full soak). */
  intervalMs: number;
  /** Readers per domain (two domains). */
  readersPerDomain?: number;
  diskBytes?: number;
  cacheMiB?: number;
  /** How long each read phase lasts before the domain's next guest write. */
  readPhaseMs?: number;
  print?: (line: string) => void;
}

export interface SoakResult {
  samples: Sample[];
  bytesVerified: number;
  reads: number;
  exports: number;
  guestWrites: number;
  cacheMiB: number;
  /** Nothing of ours left for either domain after the unmount. */
  leftovers: string[];
  exit: { code: number | null; signal: string | null };
}

const TARGETS = ['sda', 'sdb'];
const MAX_READ = 2 * MiB;

/** A read size from 1 byte to 2 MiB, most of them small, as a scanner's. */
function readSize(): number {
  return Math.max(1, Math.floor(MAX_READ * Math.random() ** 3));
}

class Domain {
  /** The guest-visible bytes of each disk now (= at the next export's start). */
  readonly expected = new Map<string, Buffer>();
  reading = false;
  open = 0;
  exports = 0;
  writes = 0;
  constructor(readonly vm: LabVm, readonly m: FsMount) {}
  file(target: string): string { return this.m.path(this.vm.name, 'c1', `${target}.raw`); }
}

interface Shared { stop: boolean; failure: Error | undefined; bytes: number; reads: number }

/** One reader: while its domain reads, open a random disk, check random ranges, close. */
async function reader(d: Domain, s: Shared): Promise<void> {
  while (!s.stop) {
    if (!d.reading) { await sleep(20); continue; }
    const target = TARGETS[randomInt(TARGETS.length)]!;
    const want = d.expected.get(target)!;
    d.open++;
    try {
      const fh = await open(d.file(target), 'r');
      try {
        for (let i = 0; i < 16 && d.reading && !s.stop; i++) {
          const offset = randomInt(want.length);
          const length = Math.min(readSize(), want.length - offset);
          const buf = Buffer.allocUnsafe(length);
          const { bytesRead } = await fh.read(buf, 0, length, offset);
          const exp = want.subarray(offset, offset + length);
          if (bytesRead !== length || !buf.equals(exp)) {
            throw new Error(`${d.vm.name}/${target}: read of ${length} at ${offset} got ${bytesRead} bytes, ` +
              `first difference at ${offset + firstDiff(buf.subarray(0, bytesRead), exp)} (export ${d.exports})`);
          }
          s.bytes += length;
          s.reads++;
        }
      } finally {
        await fh.close();
      }
    } finally {
      d.open--;
    }
  }
}

/** The domain's phases: read, then (export released) one guest write of a new pattern. */
async function phases(d: Domain, s: Shared, readPhaseMs: number): Promise<void> {
  while (!s.stop) {
    d.reading = true;
    d.exports++;
    await sleep(readPhaseMs);
    d.reading = false;
    while (d.open > 0) await sleep(20);
    if (s.stop) return;
    await waitReleased(d.vm, 30_000);
    const target = TARGETS[randomInt(TARGETS.length)]!;
    const disk = d.expected.get(target)!;
    const offset = randomInt(disk.length / 512) * 512;
    const length = Math.min(disk.length - offset, (1 + randomInt(2048)) * 512);
    const pattern = 1 + randomInt(255);
    await d.vm.write(target, offset, length, pattern);
    disk.fill(pattern, offset, offset + length);
    d.writes++;
  }
}

/** A qcow2 image of random content; returns its raw bytes. */
async function randomImage(dir: string, name: string, size: number): Promise<{ file: string; content: Buffer }> {
  const content = randomBytes(size);
  const raw = path.join(dir, `${name}.raw`);
  const file = path.join(dir, `${name}.qcow2`);
  await writeFile(raw, content);
  await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, file]);
  await rm(raw);
  return { file, content };
}

/** Two running lab domains of two disks of random content each, with checkpoint c1. */
async function labDomains(lab: Lab, tmp: string, size: number): Promise<{ vm: LabVm; content: Map<string, Buffer> }[]> {
  const vms: { vm: LabVm; content: Map<string, Buffer> }[] = [];
  for (let v = 0; v < 2; v++) {
    const imgs = await Promise.all(TARGETS.map((t) => randomImage(tmp, `d${v}-${t}`, size)));
    const vm = await lab.vm({ disks: TARGETS.map((t, i) => ({ target: t, bus: 'sata' as const, size, image: imgs[i]!.file })) });
    await checkpoint(vm, 'c1');
    vms.push({ vm, content: new Map(TARGETS.map((t, i) => [t, imgs[i]!.content])) });
  }
  return vms;
}

/** Samples the daemon once per interval until the soak's time is up (or a worker failed). */
async function sample(o: SoakOptions, m: FsMount, s: Shared, domains: Domain[], print: (l: string) => void): Promise<Sample[]> {
  const samples: Sample[] = [];
  const t0 = Date.now();
  let last = { bytes: s.bytes, at: t0, cpu: await cpuSeconds(m.pid) };
  while (!s.stop && Date.now() - t0 < o.durationMs) {
    // Resources counted once a second: whatever is in flight at a count (sockets of an export
    // being started, a virsh call, a timer) comes and goes, so the interval's least count is
    // its baseline, and a leak raises it.
    const end = Math.min(last.at + o.intervalMs, t0 + o.durationMs);
    let least = { count: Infinity, kinds: '' };
    while (!s.stop && Date.now() < end) {
      await sleep(Math.min(1000, end - Date.now()));
      const r = await daemonResources(m.pid, () => m.stderr);
      if (r.count < least.count) least = r;
    }
    if (s.stop) break;
    const now = { bytes: s.bytes, at: Date.now(), cpu: await cpuSeconds(m.pid) };
    const mb = (now.bytes - last.bytes) / 1e6;
    const x: Sample = {
      at: (now.at - t0) / 1000, mbPerS: mb / ((now.at - last.at) / 1000), mbPerCpuS: mb / Math.max(0.01, now.cpu - last.cpu),
      rssMiB: await rssMiB(m.pid), resources: least.count, kinds: least.kinds, exports: domains.reduce((a, d) => a + d.exports, 0),
    };
    last = now;
    samples.push(x);
    print(formatSample(x, `${o.intervalMs >= 60_000 ? 'minute' : 'interval'} ${samples.length} (${x.at.toFixed(0)} s)`));
  }
  return samples;
}

/** A worker's failure, with the daemon's last warnings and errors: the reason is usually there. */
function withDaemonLog(err: Error, m: FsMount): Error {
  const lines = m.stderr.split('\n').filter((l) => /: (warning|error): /.test(l)).slice(-12);
  return lines.length === 0 ? err : new Error(`${err.message}\nthe daemon's last warnings and errors:\n${lines.join('\n')}`, { cause: err });
}

export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const print = o.print ?? ((l: string) => console.log(l));
  const cacheMiB = o.cacheMiB ?? 64;
  const lab = new Lab('soak');
  const tmp = await mkdtemp('/var/tmp/vircptfs-soak-');
  const s: Shared = { stop: false, failure: undefined, bytes: 0, reads: 0 };
  let m: FsMount | undefined;
  try {
    const vms = await labDomains(lab, tmp, o.diskBytes ?? 64 * MiB);
    m = await mountFs({ options: [...vms.map((x) => `domain=${x.vm.name}`), 'idle=1', 'nofreeze', `cache=${cacheMiB}M`] });
    const domains = vms.map((x) => { const d = new Domain(x.vm, m!); for (const [t, c] of x.content) d.expected.set(t, c); return d; });
    const fail = (err: unknown) => { s.failure ??= err instanceof Error ? err : new Error(String(err)); s.stop = true; };
    const workers = domains.flatMap((d) => [
      phases(d, s, o.readPhaseMs ?? 4000).catch(fail),
      ...Array.from({ length: o.readersPerDomain ?? 4 }, () => reader(d, s).catch(fail)),
    ]);
    // Warm-up, ended by a condition: the daemon's memory grows until its block cache is full
    // (and V8's heap has its working size), so sampling starts once the readers have read four
    // times the cache and each domain has been through two releases and restarts, however fast
    // or slow the machine is today.
    const w0 = Date.now();
    while (!s.stop && (s.bytes < 4 * cacheMiB * MiB || domains.some((d) => d.exports < 3))) await sleep(100);
    print(`warm-up: ${((Date.now() - w0) / 1000).toFixed(1)} s (${(s.bytes / MiB).toFixed(0)} MiB read, 3 exports per domain)`);
    const samples = await sample(o, m, s, domains, print);
    s.stop = true;
    await Promise.all(workers);
    if (s.failure) throw withDaemonLog(s.failure, m);
    for (const d of domains) await waitReleased(d.vm, 30_000);
    const exit = await m.stop('SIGTERM');
    const leftovers = (await Promise.all(domains.map((d) => leftoversOf(d.vm.name)))).flat();
    return {
      samples, bytesVerified: s.bytes, reads: s.reads, exports: domains.reduce((a, d) => a + d.exports, 0),
      guestWrites: domains.reduce((a, d) => a + d.writes, 0), cacheMiB, leftovers, exit,
    };
  } finally {
    s.stop = true;
    await m?.cleanup();
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  }
}
