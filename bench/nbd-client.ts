// node dist/bench/nbd-client.js: our NBD client against nbdcopy, reading a whole 4 GiB qcow2
// export (~1.5 GiB data, the rest unallocated) served by qemu-nbd on a Unix socket. Both skip
// what base:allocation reports as zeros. Prints MB/s (export bytes per second), the ratio
// ours/nbdcopy, CPU seconds per GiB of data read, and our peak RSS. Removes all it made.
//
// Environment: BENCH_RUNS (runs per subject, default 5), BENCH_VARIANTS=0 to compare only
// nbdcopy and our defaults (the variants show what request size and depth do against qemu-nbd;
// the defaults were chosen on a running VM's export, where bursts matter: see client.ts),
// BENCH_TLS=0 without the TLS rows, BENCH_TLS_WORKER=0 without their worker-thread prototype.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { NbdClient, NbdPool, type NbdPoolOptions } from '../src/nbd/index.js';
import { NbdConnection } from '../src/nbd/connection.js';
import { readAll, type ReadableExport } from '../test/nbd/read-all.js';
import { remoteLab, serverCerts } from '../test/lab/remote.js';
import { execFileP, makeQcow2, requireTool, startQemuNbd, startQemuNbdTcp, type NbdServer } from '../test/nbd/servers.js';
import { workerExport } from './nbd-tls-worker.js';

export { readAll } from '../test/nbd/read-all.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const DISK_SIZE = 4 * GiB;
const SLOT = 64 * MiB;
const DATA_PER_SLOT = 24 * MiB; // 64 slots x 24 MiB = 1.5 GiB
const UNIT = 64 * 1024; // qcow2's default cluster
const runs = Number(process.env.BENCH_RUNS ?? 5);

export interface Sample {
  seconds: number;
  cpuSeconds: number;
  dataBytes: number;
  /** Our main (JavaScript) thread alone. */
  mainCpuSeconds?: number;
  /** The NBD server's (TLS rows: both ends pay for TLS). */
  serverCpuSeconds?: number;
}

/** utime + stime of a process or thread, from proc(5) (clock ticks of 10 ms). */
function procCpu(statFile: string): number {
  const stat = readFileSync(statFile, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

const mainThreadCpu = () => procCpu(`/proc/self/task/${process.pid}/stat`);

/** A seeded generator (mulberry32), so every run of the benchmark writes the same layout. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** qemu-io writes: in each 64 MiB slot, 24 MiB of data in 1-4 runs of mixed fill patterns. */
export function writeCommands(): string[] {
  const rand = prng(0x6e6264);
  const cmds: string[] = [];
  for (let slot = 0; slot < DISK_SIZE / SLOT; slot++) {
    const parts = 1 + Math.floor(rand() * 4);
    const units = DATA_PER_SLOT / UNIT / parts;
    const room = (SLOT - DATA_PER_SLOT) / UNIT / parts;
    for (let i = 0, pos = slot * SLOT; i < parts; i++) {
      pos += Math.floor(rand() * room) * UNIT;
      cmds.push(`write -q -P 0x${(1 + Math.floor(rand() * 254)).toString(16)} ${pos} ${units * UNIT}`);
      pos += units * UNIT;
    }
  }
  return cmds;
}

/** Our client (a pool when options.connections > 1) reading the whole export to nowhere, in this process. */
export function timeOurs(options: NbdPoolOptions, concurrency: number): Promise<Sample> {
  return timeSource(() => (options.connections && options.connections > 1 ? NbdPool.connect(options) : NbdClient.connect(options)), concurrency);
}

async function timeSource(open: () => Promise<ReadableExport & { close(): Promise<void> }>, concurrency: number): Promise<Sample> {
  const cpu0 = process.cpuUsage();
  const main0 = mainThreadCpu();
  const t0 = performance.now();
  const source = await open();
  const { bytesRead } = await readAll(source, { concurrency });
  await source.close();
  const cpu = process.cpuUsage(cpu0);
  return { seconds: (performance.now() - t0) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6, dataBytes: bytesRead, mainCpuSeconds: mainThreadCpu() - main0 };
}

/** A sample with the CPU time `serverPid` spent meanwhile. */
async function withServer(serverPid: number, run: () => Promise<Sample>): Promise<Sample> {
  const cpu0 = procCpu(`/proc/${serverPid}/stat`);
  const sample = await run();
  return { ...sample, serverCpuSeconds: procCpu(`/proc/${serverPid}/stat`) - cpu0 };
}

async function timeNbdcopy(uri: string, dataBytes: number, extra: string[] = []): Promise<Sample> {
  const { stderr } = await execFileP('/usr/bin/time', ['-f', 'TIME %e %U %S', 'nbdcopy', ...extra, uri, 'null:']);
  const [, elapsed, user, sys] = /TIME (\S+) (\S+) (\S+)/.exec(stderr)!.map(Number);
  return { seconds: elapsed!, cpuSeconds: user! + sys!, dataBytes };
}

interface Row { name: string; best: number; median: number; cpuPerGiB: number; mainPerGiB?: number; serverPerGiB?: number }

function summary(name: string, samples: Sample[]): Row {
  const mid = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const perGiB = (pick: (s: Sample) => number | undefined) => {
    const xs = samples.filter((s) => pick(s) !== undefined).map((s) => pick(s)! / (s.dataBytes / GiB));
    return xs.length === 0 ? undefined : mid(xs);
  };
  const rates = samples.map((s) => DISK_SIZE / s.seconds / 1e6).sort((a, b) => a - b);
  return { name, best: rates.at(-1)!, median: mid(rates), cpuPerGiB: perGiB((s) => s.cpuSeconds)!,
    mainPerGiB: perGiB((s) => s.mainCpuSeconds), serverPerGiB: perGiB((s) => s.serverCpuSeconds) };
}

function print(rows: Row[], reference: Row): void {
  const opt = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(2)).padStart(8);
  const withServer = rows.some((r) => r.serverPerGiB !== undefined);
  console.log(`\n${'reader'.padEnd(52)} ${'best MB/s'.padStart(10)} ${'median'.padStart(8)} ${'x nbdcopy'.padStart(10)} ${'CPU s/GiB'.padStart(10)} ${'JS thr.'.padStart(8)}${withServer ? ` ${'server'.padStart(8)}` : ''}`);
  for (const r of rows) {
    console.log(`${r.name.padEnd(52)} ${r.best.toFixed(0).padStart(10)} ${r.median.toFixed(0).padStart(8)} ${(r.median / reference.median).toFixed(2).padStart(10)} ${r.cpuPerGiB.toFixed(3).padStart(10)} ${opt(r.mainPerGiB)}${withServer ? ` ${opt(r.serverPerGiB)}` : ''}`);
  }
}

type Subject = { name: string; run: () => Promise<Sample> };

function subjects(server: NbdServer, dataBytes: number): Subject[] {
  const base: NbdPoolOptions = { socketPath: server.socketPath!, exportName: server.exportName, metaContexts: ['base:allocation'] };
  const ours = (name: string, options: Partial<NbdPoolOptions>, concurrency = options.maxInFlight ?? 8): Subject =>
    ({ name: `ours: ${name}`, run: () => timeOurs({ ...base, ...options }, concurrency) });
  const nbdcopy = (name: string, extra: string[]): Subject => ({ name, run: () => timeNbdcopy(server.uri, dataBytes, extra) });
  const all = [
    nbdcopy('nbdcopy URI null: (defaults)', []),
    ours('defaults (1 connection, 8 x 256 KiB, onread)', {}),
  ];
  if (process.env.BENCH_VARIANTS === '0') return all;
  return [...all,
    ours('data events instead of onread', { onread: false }),
    ours('16 x 256 KiB', { maxInFlight: 16 }),
    ours('8 x 512 KiB', { requestSize: 512 * KiB }),
    ours('16 x 512 KiB (the old defaults)', { requestSize: 512 * KiB, maxInFlight: 16 }),
    ours('16 x 1 MiB', { requestSize: MiB, maxInFlight: 16 }),
    ours('4 x 4 MiB', { requestSize: 4 * MiB, maxInFlight: 4 }),
    ours('pool of 2 connections, 8 x 256 KiB each', { connections: 2 }),
    nbdcopy('nbdcopy --connections=1', ['--connections=1']),
  ];
}

async function measure(server: NbdServer): Promise<number> {
  const base: NbdPoolOptions = { socketPath: server.socketPath!, exportName: server.exportName, metaContexts: ['base:allocation'] };
  const warm = await timeOurs(base, 16); // also warms the page cache
  await timeNbdcopy(server.uri, warm.dataBytes);
  console.log(`data read per pass: ${(warm.dataBytes / GiB).toFixed(2)} GiB of ${DISK_SIZE / GiB} GiB`);
  const rssBefore = process.resourceUsage().maxRSS;
  const list = subjects(server, warm.dataBytes);
  const samples = list.map(() => [] as Sample[]);
  // Round after round over every subject, so that machine noise hits them all alike.
  for (let round = 0; round < runs; round++) {
    for (const [i, subject] of list.entries()) samples[i]!.push(await subject.run());
  }
  const rows = list.map((subject, i) => summary(subject.name, samples[i]!));
  print(rows, rows[0]!);
  const rssAfter = process.resourceUsage().maxRSS;
  console.log(`\npeak RSS of this process: ${(rssAfter / 1024).toFixed(0)} MiB (${(rssBefore / 1024).toFixed(0)} MiB after one pass with the defaults)`);
  console.log(`${runs} runs each, interleaved; MB/s = export bytes (4 GiB) / wall time; CPU per GiB of data read`);
  return warm.dataBytes;
}

/**
 * NBD over TLS (BENCH_TLS=0 skips it): the same image from qemu-nbd on 127.0.0.1 with the lab's
 * certificates (scripts/lab-remote.sh), ours against `nbdcopy nbds://...?tls-certificates= null:`.
 */
async function measureTls(image: string, dataBytes: number): Promise<void> {
  const lab = remoteLab();
  const server = await startQemuNbdTcp({ image, format: 'qcow2', host: '127.0.0.1', tlsDir: serverCerts(lab) });
  try {
    const uri = `nbds://127.0.0.1:${server.port}/${server.exportName}?tls-certificates=${lab.nbdCerts}`;
    const base: NbdPoolOptions = { host: server.host, port: server.port, exportName: server.exportName, metaContexts: ['base:allocation'],
      tls: { mode: 'require', certs: lab.nbdCerts } };
    const probe = await NbdConnection.open({ host: server.host, port: server.port, tls: base.tls });
    const cipher = probe.tlsCipher;
    await probe.close();
    const all: Subject[] = [
      { name: 'nbdcopy nbds:// null: (defaults)', run: () => timeNbdcopy(uri, dataBytes) },
      { name: 'ours: TLS, 1 connection, 8 x 256 KiB', run: () => timeOurs(base, 8) },
      { name: 'ours: TLS, pool of 2 connections', run: () => timeOurs({ ...base, connections: 2 }, 16) },
      { name: 'ours: TLS, 1 connection, \'data\' events (before)', run: () => timeOurs({ ...base, onread: false }, 8) },
      { name: 'nbdcopy nbds:// --connections=1', run: () => timeNbdcopy(uri, dataBytes, ['--connections=1']) },
      { name: 'prototype: 1 worker thread (nbd-tls-worker.ts)', run: () => timeSource(() => workerExport(base, 1), 8) },
      { name: 'prototype: 2 worker threads, 1 connection each', run: () => timeSource(() => workerExport(base, 2), 16) },
    ];
    const list = process.env.BENCH_TLS_WORKER === '0' ? all.slice(0, 5) : all;
    const samples = list.map(() => [] as Sample[]);
    for (let round = 0; round < runs; round++) {
      for (const [i, subject] of list.entries()) samples[i]!.push(await withServer(server.pid, subject.run));
    }
    console.log(`\nNBD over TLS (qemu-nbd on 127.0.0.1, ${cipher}, x509 with client certificate; CPU s/GiB: the reader's process, its JS thread, qemu-nbd):`);
    const rows = list.map((subject, i) => summary(subject.name, samples[i]!));
    print(rows, rows[0]!);
  } finally {
    await server.stop();
  }
}

/** The benchmark's image: 4 GiB qcow2, 1.5 GiB of data in scattered runs. */
export function buildBenchImage(file: string): Promise<void> {
  return makeQcow2(file, DISK_SIZE, [{ io: writeCommands() }]);
}

async function main(): Promise<void> {
  for (const [tool, pkg] of [['qemu-nbd', 'qemu-utils'], ['nbdcopy', 'libnbd-bin']] as const) requireTool(tool, pkg);
  requireTool('/usr/bin/time', 'time');
  const dir = await mkdtemp(path.join('/var/tmp', `vircpt-nbdbench-${process.pid}-${randomBytes(3).toString('hex')}-`));
  let server: NbdServer | undefined;
  const cleanup = async () => { await server?.stop(); await rm(dir, { recursive: true, force: true }); };
  const onSignal = () => { void cleanup().finally(() => process.exit(130)); };
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  try {
    const image = path.join(dir, 'disk.qcow2');
    const t0 = performance.now();
    await buildBenchImage(image);
    console.log(`image: 4 GiB qcow2, 1.5 GiB data, made in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    server = await startQemuNbd({ image });
    const dataBytes = await measure(server);
    if (process.env.BENCH_TLS !== '0') await measureTls(image, dataBytes);
  } finally {
    await cleanup();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
