// npm run bench:fuse: the floor the FUSE binding puts under vircptfs. A 4 GiB file answered from
// memory through the FUSE addon (fuse-floor-fs.ts, a process of its own) against the
// same size from nbdkit's pattern plugin through nbdfuse (libnbd's C client, libfuse 3): cold dd,
// cat and 4 parallel dd; the read requests each file system saw; and per 128 KiB read, the wall
// time and the CPU time of the serving process (the binding's JS thread apart), of nbdkit and of
// the readers. Then an A/B of read-ahead, max_background and direct_io on the binding. Every mount and
// process it starts is stopped by its PID and its folder removed, also on failure and SIGINT.
//
// Environment: BENCH_RUNS (runs per test and variant, default 3), BENCH_FLOOR_AB=0 (the floor
// and nbdfuse only; any other text: the A/B variants whose name holds it, e.g. direct_io).
import { fork, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, open, readFile, rm, rmdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { readMountinfo, setReadAhead } from '../src/fs/fuse/index.js';
import { requireTools } from '../test/lab/tools.js';
import { best, dropCaches, measure, median, statCpu, type TestName } from './fs-measure.js';
import { endChild, once, startChild, unmountFuse, waitFor, type Subject } from './fs-subjects.js';
import { DIRECT_IO, FILE_NAME, FILE_SIZE, fillPattern } from './fuse-floor-fs.js';

const KiB = 1024;
const CHUNK = 128 * KiB; // the unit of the per-request figures: libfuse 2's request size (libfuse 3 sends up to 1 MiB; the reqs column shows what came)
const CHUNKS = FILE_SIZE / CHUNK;
const TESTS: readonly TestName[] = ['dd', 'cat', 'parallel'];
const READY_TIMEOUT_MS = 30_000;
const FS_SCRIPT = fileURLToPath(new URL('./fuse-floor-fs.js', import.meta.url));
const runs = Number(process.env.BENCH_RUNS ?? 3);
/** BENCH_FLOOR_AB: 0 none of the A/B variants, unset or 1 all, any other text those whose name holds it. */
const abFilter = process.env.BENCH_FLOOR_AB ?? '1';
const abVariants = (): readonly Variant[] =>
  abFilter === '0' ? [] : abFilter === '1' ? AB_VARIANTS : AB_VARIANTS.filter((v) => v.name.includes(abFilter));

interface Variant { name: string; server: 'binding' | 'nbdfuse'; readaheadKb: number; options?: string[] }
const MB64 = ['max_background=64', 'congestion_threshold=48'];
/** vircptfs's own settings (src/fs/mount.ts, options.ts): the floor. */
const FLOOR: Variant = { name: 'binding ra=1024', server: 'binding', readaheadKb: 1024 };
/** As npm run bench runs it (bench/fs-subjects.ts): the kernel's 128 KiB read-ahead. */
const NBDFUSE: Variant = { name: 'nbdfuse ra=128', server: 'nbdfuse', readaheadKb: 128 };
const VARIANTS: readonly Variant[] = [FLOOR, NBDFUSE, { name: 'nbdfuse ra=1024', server: 'nbdfuse', readaheadKb: 1024 }];
const AB_VARIANTS: readonly Variant[] = [
  { name: 'binding ra=128', server: 'binding', readaheadKb: 128 },
  { name: 'binding ra=4096', server: 'binding', readaheadKb: 4096 },
  { name: 'binding ra=1024 mb64', server: 'binding', readaheadKb: 1024, options: MB64 },
  { name: 'binding ra=4096 mb64', server: 'binding', readaheadKb: 4096, options: MB64 },
  { name: 'binding direct_io', server: 'binding', readaheadKb: 1024, options: [DIRECT_IO] },
];

interface Served extends Subject {
  readonly variant: Variant;
  /** The binding's JS thread: its process's main thread. */
  readonly mainTid?: number;
  readonly backendPid?: number;
  /** Read requests (and bytes, when known) the file system answered so far. */
  count(): Promise<{ reads: number; bytes?: number; handles?: number }>;
}

interface Row {
  seconds: number; server: number; serverSys: number; main?: number; backend?: number; readers: number;
  requests: number; bytes?: number;
  /** libuv handles of the binding's process after the run. */
  handles?: number;
}

function note(msg: string): void {
  process.stderr.write(`[bench:fuse ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function waitExit(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
}

async function startBinding(v: Variant, mnt: string): Promise<Served> {
  await mkdir(mnt, { mode: 0o755 });
  const child = fork(FS_SCRIPT, [mnt, ...(v.options ?? [])], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = waitExit(child);
  const stop = once(async () => {
    if (child.connected) child.send('stop');
    await endChild(child, exited, false);
    await unmountFuse(mnt);
    await rmdir(mnt);
  });
  try {
    await Promise.race([
      new Promise<void>((resolve, reject) => child.once('message', (m: { ready?: boolean; error?: string }) =>
        (m.ready ? resolve() : reject(new Error(`${v.name}: ${m.error}`))))),
      exited.then(() => { throw new Error(`${v.name}: the file system exited before mounting`); }),
      sleep(READY_TIMEOUT_MS, undefined, { ref: false }).then(() => { throw new Error(`${v.name}: not mounted after ${READY_TIMEOUT_MS} ms`); }),
    ]);
    await setReadAhead(mnt, v.readaheadKb);
  } catch (err) {
    await stop();
    throw err;
  }
  const count = () => new Promise<{ reads: number; bytes: number; handles: number }>((resolve) => {
    child.once('message', resolve);
    child.send('count');
  });
  return { name: v.name, variant: v, file: path.join(mnt, FILE_NAME), pid: child.pid!, mainTid: child.pid!, stop, count };
}

/** nbdkit pattern (each 8-byte word holds its offset, big-endian) + nbdfuse, the C reference (docs/lab.md). */
async function startNbdfuse(v: Variant, mnt: string): Promise<Served> {
  await mkdir(mnt, { mode: 0o755 });
  const sock = `${mnt}.sock`;
  const pidFile = (tool: string) => `${mnt}.${tool}.pid`;
  const ready = (tool: string, p: ReturnType<typeof startChild>) => waitFor(tool, READY_TIMEOUT_MS, async () => {
    if (p.child.exitCode !== null) throw new Error(`${tool} exited (${p.child.exitCode}): ${p.stderr()}`);
    return ((await stat(pidFile(tool)).catch(() => undefined))?.size ?? 0) > 0; // written once it serves
  });
  const kit = startChild('nbdkit', ['-f', '--exit-with-parent', '-U', sock, '-P', pidFile('nbdkit'), 'pattern', `size=${FILE_SIZE}`]);
  let fuse: ReturnType<typeof startChild> | undefined;
  const stop = once(async () => {
    await unmountFuse(mnt); // nbdfuse exits once unmounted (nbdfuse(1) -P)
    if (fuse) await endChild(fuse.child, fuse.exited, false);
    await unmountFuse(mnt);
    await endChild(kit.child, kit.exited, true);
    await rmdir(mnt);
  });
  try {
    await ready('nbdkit', kit);
    fuse = startChild('nbdfuse', ['-r', '-P', pidFile('nbdfuse'), path.join(mnt, FILE_NAME), `nbd+unix:///?socket=${sock}`]);
    await ready('nbdfuse', fuse);
    await setReadAhead(mnt, v.readaheadKb);
  } catch (err) {
    await stop();
    throw err;
  }
  const pid = fuse.child.pid!;
  // One read(2) of /dev/fuse per request (libfuse 3 without splice; libnbd's recv() are not
  // counted): checked against nbdkit --filter=stats, 32768 for dd and 16384 for cat at ra=128.
  const count = async () => ({ reads: Number(/^syscr: (\d+)/m.exec(await readFile(`/proc/${pid}/io`, 'utf8'))![1]) });
  return { name: v.name, variant: v, file: path.join(mnt, FILE_NAME), pid, backendPid: kit.child.pid!, stop, count };
}

/** 256 KiB at an odd place near the end, against what each server is meant to return. */
async function checkData(s: Served): Promise<void> {
  const [pos, len] = [FILE_SIZE - 5 * CHUNK + 8 * 1234, 2 * CHUNK];
  const want = Buffer.alloc(len);
  if (s.variant.server === 'binding') fillPattern(want, len, pos);
  else for (let i = 0; i < len; i += 8) want.writeBigUInt64BE(BigInt(pos + i), i);
  const fh = await open(s.file, 'r');
  try {
    const got = Buffer.alloc(len);
    const { bytesRead } = await fh.read(got, 0, len, pos);
    if (bytesRead !== len || !got.equals(want)) throw new Error(`${s.name}: wrong bytes at offset ${pos}`);
  } finally {
    await fh.close();
  }
}

async function snapshot(s: Served) {
  const [server, main, backend, readers, count] = await Promise.all([
    statCpu(`/proc/${s.pid}/stat`),
    s.mainTid ? statCpu(`/proc/${s.pid}/task/${s.mainTid}/stat`) : undefined,
    s.backendPid ? statCpu(`/proc/${s.backendPid}/stat`) : undefined,
    statCpu('/proc/self/stat', true), // dd, cat and sh: our waited-for children
    s.count(),
  ]);
  return { server, main, backend, readers, count };
}

async function sample(s: Served, test: TestName, work: string): Promise<Row> {
  await dropCaches();
  const a = await snapshot(s);
  const { seconds } = await measure(s, test, FILE_SIZE, work, false);
  const b = await snapshot(s);
  const cpu = (x?: { user: number; sys: number }, y?: { user: number; sys: number }) => (x && y ? y.user + y.sys - x.user - x.sys : undefined);
  const bytes = b.count.bytes === undefined ? undefined : b.count.bytes - (a.count.bytes ?? 0);
  // Parallel readers may each read ahead into the next quarter before it is cached: more, not less.
  if (bytes !== undefined && bytes < FILE_SIZE) throw new Error(`${s.name} ${test}: served ${bytes} bytes`);
  return {
    seconds, server: cpu(a.server, b.server)!, serverSys: b.server.sys - a.server.sys, main: cpu(a.main, b.main),
    backend: cpu(a.backend, b.backend), readers: cpu(a.readers, b.readers)!, requests: b.count.reads - a.count.reads, bytes,
    handles: b.count.handles,
  };
}

type Results = Map<string, Map<TestName, Row[]>>;

/** Each test, `runs` rounds, the variants rotated from round to round so none always goes first. */
async function runAll(subjects: Served[], work: string): Promise<Results> {
  const results: Results = new Map(subjects.map((s) => [s.name, new Map()]));
  for (const test of TESTS) {
    for (let i = 0; i < runs; i++) {
      for (let k = 0; k < subjects.length; k++) {
        const s = subjects[(i + k) % subjects.length]!;
        const row = await sample(s, test, work);
        const rows = results.get(s.name)!;
        rows.set(test, [...(rows.get(test) ?? []), row]);
        note(`${s.name} ${test}: ${(FILE_SIZE / 1e6 / row.seconds).toFixed(0)} MB/s, server CPU ${row.server.toFixed(2)} s`);
      }
    }
  }
  return results;
}

const f0 = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(0));
const med = (rows: Row[], key: keyof Row) => (rows.every((r) => r[key] !== undefined) ? median(rows.map((r) => r[key]!)) : undefined);
const mbs = (seconds: number) => FILE_SIZE / 1e6 / seconds;
const perChunk = (s: number | undefined) => (s === undefined ? undefined : (s * 1e6) / CHUNKS);

function report(results: Results, order: Served[], load: string[]): string {
  const head = `${'variant'.padEnd(22)}${'test'.padEnd(10)}${'MB/s med (best)'.padStart(16)}${'reqs'.padStart(7)}${'KiB/req'.padStart(8)}` +
    `  | us per 128 KiB:${'wall'.padStart(6)}${'server'.padStart(8)}${'(sys)'.padStart(7)}${'JS thr'.padStart(8)}${'nbdkit'.padStart(8)}${'readers'.padStart(8)}`;
  const lines = [
    '', `FUSE binding floor: ${FILE_SIZE / KiB ** 3} GiB file, page cache dropped before each run, median of ${runs} (best)`,
    `load average at start: ${load[0]}; at end: ${load[1]} (2 cores, shared)`,
    'binding = the addon (src/fs/fuse/) answering from a 1 MiB pattern in memory (fuse-floor-fs.ts), vircptfs options;',
    '  its requests counted by the file system, JS thr = its main thread, server - JS thr = the addon writer threads + V8/libuv',
    'nbdfuse = libnbd C client (libfuse 3) over nbdkit pattern; its requests = its read(2)s of /dev/fuse (/proc/PID/io syscr)',
    'readers = CPU of dd/cat (their kernel copies from the page cache); ra = read_ahead_kb; mb64 = ' + MB64.join(','),
    '', head, '-'.repeat(head.length),
  ];
  for (const s of order) {
    for (const test of TESTS) {
      const rows = results.get(s.name)?.get(test) ?? [];
      if (rows.length === 0) continue;
      const t = rows.map((r) => r.seconds);
      const reqs = med(rows, 'requests')!;
      const bytes = med(rows, 'bytes') ?? FILE_SIZE;
      lines.push(s.name.padEnd(22) + test.padEnd(10) + `${f0(mbs(median(t)))} (${f0(mbs(best(t)))})`.padStart(16) +
        f0(reqs).padStart(7) + f0(bytes / KiB / reqs).padStart(8) + ''.padStart(18) +
        [median(t), med(rows, 'server'), med(rows, 'serverSys'), med(rows, 'main'), med(rows, 'backend'), med(rows, 'readers')]
          .map((x, i) => f0(perChunk(x)).padStart(i === 0 ? 6 : i === 2 ? 7 : 8)).join(''));
    }
  }
  lines.push('', `floor (${FLOOR.name}) against ${NBDFUSE.name} (as npm run bench runs nbdfuse), medians:`);
  for (const test of TESTS) {
    const [a, b] = [FLOOR, NBDFUSE].map((v) => results.get(v.name)?.get(test) ?? []);
    if (!a?.length || !b?.length) continue;
    const [ta, tb] = [median(a.map((r) => r.seconds)), median(b.map((r) => r.seconds))];
    lines.push(`  ${test.padEnd(9)} ${f0(mbs(ta))} vs ${f0(mbs(tb))} MB/s = ${(tb / ta).toFixed(2)} x; ` +
      `wall per 128 KiB ${f0(perChunk(ta))} vs ${f0(perChunk(tb))} us; server CPU ${f0(perChunk(med(a, 'server')))} ` +
      `(JS thread ${f0(perChunk(med(a, 'main')))}) vs ${f0(perChunk(med(b, 'server')))} us + nbdkit ${f0(perChunk(med(b, 'backend')))} us`);
  }
  const binding = order.filter((s) => s.variant.server === 'binding');
  if (binding.length > 1) {
    lines.push('', `A/B on the binding (median MB/s, change against ${FLOOR.name}):`);
    for (const test of TESTS) {
      const m = (s: Served) => mbs(median((results.get(s.name)?.get(test) ?? []).map((r) => r.seconds)));
      const base = m(binding[0]!);
      const cells = binding.map((s) => `${s.name.replace('binding ', '')} ${f0(m(s))}${s === binding[0] ? '' : ` (${m(s) >= base ? '+' : ''}${f0((m(s) / base - 1) * 100)}%)`}`);
      const top = binding.reduce((x, y) => (m(y) > m(x) ? y : x));
      lines.push(`  ${test.padEnd(9)} ${cells.join(', ')}; best: ${top.name}`);
    }
    const handles = (s: Served) => Math.max(...[...(results.get(s.name)?.values() ?? [])].flat().map((r) => r.handles ?? 0));
    lines.push(`  libuv handles, most seen: ${binding.map((s) => `${s.name.replace('binding ', '')} ${handles(s)}`).join(', ')}`);
  }
  return [...lines, ''].join('\n');
}

async function main(): Promise<number> {
  const steps: (() => Promise<unknown>)[] = [];
  const cleanup = once(async () => {
    for (const step of steps.reverse()) await step().catch((err: unknown) => note(`cleanup: ${String(err)}`));
  });
  let interrupted = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => { // process.on, not once: see bench/fs.ts
      if (interrupted) return;
      interrupted = true;
      note(`${sig}: cleaning up`);
      void cleanup().finally(() => process.exit(130));
    });
  }
  try {
    if (process.getuid?.() !== 0) throw new Error('the benchmark needs root (drop_caches, FUSE)');
    if (!Number.isInteger(runs) || runs < 1) throw new Error(`BENCH_RUNS=${process.env.BENCH_RUNS}: a whole number >= 1`);
    await requireTools('nbdkit', 'nbdfuse', 'fusermount3');
    const load = [await readFile('/proc/loadavg', 'utf8')];
    const work = await mkdtemp(`/tmp/vcptfloor-${process.pid}-`);
    steps.push(async () => {
      if ((await readMountinfo()).some((m) => m.mountpoint.startsWith(`${work}/`))) throw new Error(`${work} still holds a mount: left in place`);
      await rm(work, { recursive: true, force: true });
    });
    const subjects: Served[] = [];
    for (const [i, v] of [...VARIANTS, ...abVariants()].entries()) {
      const s = await (v.server === 'binding' ? startBinding : startNbdfuse)(v, path.join(work, `m${i}`));
      steps.push(() => s.stop());
      await checkData(s);
      subjects.push(s);
    }
    note(`data checked on ${subjects.length} mounts; runs: ${TESTS.join(', ')} x ${runs} x ${subjects.length}`);
    const results = await runAll(subjects, work);
    load.push(await readFile('/proc/loadavg', 'utf8'));
    process.stdout.write(report(results, subjects, load.map((l) => l.split(' ').slice(0, 3).join(' '))));
    return 0;
  } catch (err) {
    if (!interrupted) process.stderr.write(`bench:fuse failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  } finally {
    await cleanup();
  }
}

process.exitCode = await main();
