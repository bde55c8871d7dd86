// npm run bench: vircptfs against nbdfuse and QEMU's FUSE export, reading the same 4 GiB disk
// (1.5 GiB data) with dd, cat, cp, 4 parallel dd and a warm re-read; vircptfs's peak RSS and
// open-to-first-byte of a fresh export against `virsh backup-begin` alone. Everything it makes
// (VMs, mounts, processes, files) is removed at the end, on failure and on SIGINT/SIGTERM.
//
// Environment: BENCH_RUNS (runs per test, default 4: keep it even, see roundOrder),
// BENCH_VIRCPTFS_OPTS (extra -o options, e.g. cache=512M,readahead=4096), BENCH_TESTS (cold
// tests to run, e.g. cp,dd; default all; BENCH_TESTS=none: only the warm and first-byte runs),
// BENCH_CPU_PROFILE_DIR (a folder: vircptfs's CPU profile is written there when it exits; see
// fs-cpu-profile.ts), BENCH_TLS (0: without the TLS rows of fs-tls.ts; only: nothing but them).
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, open, readFile, rm, statfs, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { DEFAULTS, parseSize } from '../src/fs/options.js';
import { VIRCPTFS as VIRCPTFS_BIN } from '../test/lab/cli.js';
import { Lab, virsh, type LabVm } from '../test/lab/lab.js';
import { requireTools } from '../test/lab/tools.js';
import { allocatedBytes, buildImage, DATA_SIZE, DISK_SIZE } from './fs-image.js';
import { COLD_TESTS, dropCaches, firstByte, measure, statusKiB, type Sample, type TestName } from './fs-measure.js';
import { report, type Results } from './fs-report.js';
import { BackupJob, startNbdfuse, startQemuExport, startVircptfs, waitFor, type Subject } from './fs-subjects.js';
import { startTlsSubjects, TLS_TESTS, tlsReport, tlsRuns } from './fs-tls.js';

const GiB = 1024 ** 3;
const WORK_ROOT = '/var/tmp';
/** Image, two VM copies, a cp output, scratch and slack (the issue says about 12 GiB). */
const NEEDED_BYTES = 12 * GiB;
const CHECKPOINT = 'bench';
/** Short: each cold run of vircptfs reads a fresh export (freshExport), after the last one's release. */
const IDLE_S = 1;
const RELEASE_POLL_MS = 500;

const runs = Number(process.env.BENCH_RUNS ?? 4);
const tlsMode = process.env.BENCH_TLS ?? '1';
const extraOpts = (process.env.BENCH_VIRCPTFS_OPTS ?? '').split(',').filter(Boolean);
const coldTests = process.env.BENCH_TESTS ? COLD_TESTS.filter((t) => process.env.BENCH_TESTS!.split(',').includes(t)) : COLD_TESTS;
/** Read by fs-cpu-profile.ts inside vircptfs (the child inherits the environment). */
const PROFILE_DIR_ENV = 'BENCH_CPU_PROFILE_DIR';
const profileDir = process.env[PROFILE_DIR_ENV];
/** Node 20 refuses --cpu-prof in NODE_OPTIONS: a preloaded module profiles instead. */
const nodeOptions = profileDir ? `--import ${fileURLToPath(new URL('./fs-cpu-profile.js', import.meta.url))}` : undefined;

function note(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/** Undo steps, run last-in first-out once, however many times run() is called. */
class Cleanup {
  readonly #steps: { what: string; fn: () => Promise<unknown> }[] = [];
  #done: Promise<void> | undefined;

  add(what: string, fn: () => Promise<unknown>): void {
    this.#steps.push({ what, fn });
  }

  run(): Promise<void> {
    return (this.#done ??= (async () => {
      for (const { what, fn } of this.#steps.reverse()) {
        await fn().catch((err: unknown) => note(`cleanup: ${what} failed: ${String(err)}`));
      }
    })());
  }
}

async function preflight(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the benchmark needs root (drop_caches, libvirt, FUSE)');
  if (!existsSync(VIRCPTFS_BIN)) throw new Error(`${VIRCPTFS_BIN} is missing: run npm run build`);
  await requireTools('virsh', 'qemu-img', 'qemu-storage-daemon', 'nbdfuse', 'fusermount3');
  const fs = await statfs(WORK_ROOT);
  const free = fs.bavail * fs.bsize;
  if (free < NEEDED_BYTES) {
    throw new Error(`the benchmark needs about ${NEEDED_BYTES / GiB} GiB free in ${WORK_ROOT}, ` +
      `only ${(free / GiB).toFixed(1)} GiB are: free some space and retry`);
  }
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`BENCH_RUNS=${process.env.BENCH_RUNS}: a whole number >= 1`);
}

async function loadAverage(): Promise<string> {
  return (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
}

/** A lab VM on a copy of the image, with the checkpoint. */
async function labVm(lab: Lab, image: string): Promise<LabVm> {
  const vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: DISK_SIZE, image }] });
  await virsh('checkpoint-create-as', vm.name, CHECKPOINT);
  return vm;
}

type Samples = Map<string, Map<TestName, Sample[]>>;

function record(samples: Samples, s: Subject, test: TestName, x: Sample): void {
  const byTest = samples.get(s.name) ?? new Map<TestName, Sample[]>();
  samples.set(s.name, byTest);
  byTest.set(test, [...(byTest.get(test) ?? []), x]);
  note(`${s.name} ${test}: ${x.seconds.toFixed(2)} s, server CPU ${x.cpu.toFixed(2)} s`);
}

/**
 * Cold runs in rounds. The last subject (QEMU's FUSE export, 20-30 s a run) runs last in each
 * round, and the others take turns at going first, so that each of them follows it equally often
 * over an even number of rounds: a run right after it was slower for vircptfs and nbdfuse alike
 * (docs/benchmarks.md), and with a plain rotation vircptfs followed it in two rounds of three,
 * nbdfuse in one.
 */
function roundOrder<T>(subjects: readonly T[], round: number): T[] {
  const rest = subjects.slice(0, -1);
  const shift = rest.length === 0 ? 0 : round % rest.length;
  return [...rest.slice(shift), ...rest.slice(0, shift), ...subjects.slice(-1)];
}

/**
 * A cold run of vircptfs reads a fresh export, as a backup run does: the page cache dropped is
 * not enough, vircptfs remembers which files of an export were read (page_cache=auto) and holds
 * their blocks. So the last run's export is released first (idle=), and the new one is started
 * and held untimed through the dirty map; the others are cold once the page cache is dropped.
 */
async function held(s: Subject, fresh: FreshExport | undefined, fn: () => Promise<void>): Promise<void> {
  const hold = fresh?.subject === s ? await fresh.start() : undefined;
  try {
    await fn();
  } finally {
    await hold?.close();
  }
}

interface FreshExport { subject: Subject; start(): Promise<FileHandle> }

function freshExport(fs: Subject, vm: LabVm): FreshExport {
  return {
    subject: fs,
    start: async () => {
      await waitReleased(vm);
      return open(path.join(path.dirname(fs.file), 'dirty-map.json'), 'r');
    },
  };
}

async function coldRuns(subjects: Subject[], samples: Samples, outDir: string, fresh: FreshExport): Promise<void> {
  let round = 0;
  for (const test of coldTests) {
    for (let i = 0; i < runs; i++, round++) {
      for (const s of roundOrder(subjects, round)) {
        await held(s, fresh, async () => record(samples, s, test, await measure(s, test, DISK_SIZE, outDir, true)));
      }
    }
  }
}

/** Per subject, on one export: one cold dd, then `runs` re-reads (page_cache=auto: the first of
 *  them is a reader that comes back and fills the page cache, the others read from it). */
async function warmRuns(subjects: Subject[], samples: Samples, outDir: string, fresh: FreshExport): Promise<void> {
  for (const s of subjects) {
    await held(s, fresh, async () => {
      await measure(s, 'dd', DISK_SIZE, outDir, true);
      for (let i = 0; i < runs; i++) record(samples, s, 'reread', await measure(s, 'reread', DISK_SIZE, outDir, false));
    });
  }
}

/** vircptfs's export released by its idle timer: libvirt shows no job on its domain. */
async function waitReleased(vm: LabVm): Promise<void> {
  await waitFor(`vircptfs to release the export of ${vm.name}`, (IDLE_S + 30) * 1000, async () => {
    await sleep(RELEASE_POLL_MS);
    return (await vm.jobType()) === 'None';
  });
}

interface FirstByteRuns { totalMs: number[]; openMs: number[]; beginMs: number[] }

/** Alternately: `virsh backup-begin` alone on the other VM, and a fresh vircptfs export's first byte. */
async function firstByteRuns(file: string, vm: LabVm, job: BackupJob): Promise<FirstByteRuns> {
  const out: FirstByteRuns = { totalMs: [], openMs: [], beginMs: [] };
  for (let i = 0; i < runs; i++) {
    await rm(job.socket, { force: true });
    out.beginMs.push(await job.begin());
    await job.end();
    await waitReleased(vm);
    await sleep(1000); // let vircptfs finish its own cleanup after the job ended
    await dropCaches();
    const fb = await firstByte(file);
    out.totalMs.push(fb.totalMs);
    out.openMs.push(fb.openMs);
    note(`first byte: ${fb.totalMs.toFixed(0)} ms (open ${fb.openMs.toFixed(0)} ms); backup-begin alone ${out.beginMs.at(-1)!.toFixed(0)} ms`);
  }
  return out;
}

async function sameBytes(a: Subject, b: Subject): Promise<string> {
  const r = await execa('cmp', [a.file, b.file], { reject: false });
  return r.exitCode === 0 ? `${a.name} and ${b.name} files are identical (cmp)` : `DIFFERENT: ${r.stdout || r.stderr}`;
}

/** The image, checked to hold DATA_SIZE bytes of data in a work folder removed at the end. */
async function prepareImage(cleanup: Cleanup): Promise<{ work: string; image: string; dataBytes: number }> {
  const work = await mkdtemp(path.join(WORK_ROOT, 'vcptbench-fs-'));
  cleanup.add('remove the work folder', () => rm(work, { recursive: true, force: true }));
  await chmod(work, 0o755);
  const image = path.join(work, 'disk.qcow2');
  note('building the 4 GiB image (1.5 GiB data)');
  await buildImage(image);
  const dataBytes = await allocatedBytes(image);
  if (dataBytes !== DATA_SIZE) throw new Error(`the image allocates ${dataBytes} bytes, not ${DATA_SIZE}`);
  return { work, image, dataBytes };
}

interface Setup {
  fs: Subject;
  nbd: Subject;
  qemu: Subject;
  /** vircptfs's VM, and the other VM's backup job (nbdfuse's export). */
  vm: LabVm;
  job: BackupJob;
  beginMs: number;
}

/** Two VMs from copies of the image: vircptfs on one, nbdfuse on the other; QEMU on the image. */
async function startSubjects(cleanup: Cleanup, image: string, work: string, opts: string[]): Promise<Setup> {
  const lab = new Lab('bench');
  cleanup.add('remove the lab VMs', () => lab.cleanup());
  note('defining two lab VMs from copies of the image');
  const vm = await labVm(lab, image);
  const other = await labVm(lab, image);
  const fs = await startVircptfs(vm, CHECKPOINT, opts, nodeOptions);
  cleanup.add('unmount vircptfs', () => fs.stop());
  const job = await BackupJob.prepare(other, CHECKPOINT);
  cleanup.add('end the backup job', () => job.remove());
  const beginMs = await job.begin();
  const nbd = await startNbdfuse(job);
  cleanup.add('stop nbdfuse', () => nbd.stop());
  const qemu = await startQemuExport(image, work);
  cleanup.add('stop qemu-storage-daemon', () => qemu.stop());
  return { fs, nbd, qemu, vm, job, beginMs };
}

async function bench(cleanup: Cleanup): Promise<Results> {
  const loadStart = await loadAverage();
  const { work, image, dataBytes } = await prepareImage(cleanup);
  const opts = [`idle=${IDLE_S}`, ...extraOpts];
  const cacheOpt = opts.findLast((o) => o.startsWith('cache='));
  const cacheBytes = cacheOpt ? parseSize(cacheOpt.slice('cache='.length), 'cache') : DEFAULTS.cacheBytes;
  const { fs, nbd, qemu, vm, job, beginMs } = await startSubjects(cleanup, image, work, opts);

  const subjects = [fs, nbd, qemu];
  const samples: Samples = new Map();
  const fresh = freshExport(fs, vm);
  note(`cold runs: ${coldTests.join(', ')} x ${runs} x 3 (vircptfs: a fresh export each)`);
  await coldRuns(subjects, samples, work, fresh);
  note('warm re-reads');
  await warmRuns(subjects, samples, work, fresh);
  const dataCheck = await sameBytes(fs, qemu);
  const rssKiB = await statusKiB(fs.pid, 'VmHWM');

  // Quiet for the first-byte runs: only vircptfs and the other VM's job remain.
  await Promise.all([nbd.stop(), qemu.stop()]);
  await job.end();
  note(`first-byte runs (each waits ${IDLE_S} s for the idle release)`);
  const fb = await firstByteRuns(fs.file, vm, job);
  // Last: the other VM's job has ended, so vircptfs over TLS can start its own there.
  const tls = tlsMode === '0' ? [] : await tlsPhase(cleanup, job.vm, image, work, opts, dataBytes);
  return {
    size: DISK_SIZE, dataBytes, runs, samples, rssKiB, cacheBytes, dataCheck,
    firstByteMs: fb.totalMs, firstOpenMs: fb.openMs, backupBeginMs: [beginMs, ...fb.beginMs],
    load: { start: loadStart, end: await loadAverage() }, tls,
  };
}

/** The TLS rows (fs-tls.ts): their subjects started, run, stopped; returns the report's lines. */
async function tlsPhase(cleanup: Cleanup, vm: LabVm, image: string, work: string, opts: string[], dataBytes: number): Promise<string[]> {
  const [fs, nbd] = await startTlsSubjects((what, fn) => cleanup.add(what, fn), vm, CHECKPOINT, image, work, opts);
  const samples: Samples = new Map();
  note(`TLS runs: ${TLS_TESTS.join(', ')} x ${runs} x 2`);
  await tlsRuns([fs!, nbd!], runs, DISK_SIZE, work, (s, test, x) => record(samples, s, test, x));
  const check = await sameBytes(fs!, nbd!);
  await Promise.all([fs!.stop(), nbd!.stop()]);
  return [...tlsReport(samples, DISK_SIZE, dataBytes), `data check: ${check}`];
}

/** BENCH_TLS=only: one VM, the TLS rows alone. */
async function benchTlsOnly(cleanup: Cleanup): Promise<string> {
  const loadStart = await loadAverage();
  const { work, image, dataBytes } = await prepareImage(cleanup);
  const lab = new Lab('bench');
  cleanup.add('remove the lab VM', () => lab.cleanup());
  const vm = await labVm(lab, image);
  const lines = await tlsPhase(cleanup, vm, image, work, [`idle=${IDLE_S}`, ...extraOpts], dataBytes);
  return ['', `vircptfs file-read benchmark, TLS rows only: 4 GiB file, ${dataBytes / 1024 ** 2} MiB data, best of ${runs} (median)`,
    `load average at start: ${loadStart}; at end: ${await loadAverage()}`, '', ...lines, ''].join('\n');
}

async function main(): Promise<number> {
  const cleanup = new Cleanup();
  // process.on, not once: execa's signal-exit re-raises a signal that no other listener handles,
  // which would kill us in the middle of the cleanup.
  let interrupted = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (interrupted) return;
      interrupted = true;
      note(`${sig}: cleaning up`);
      void cleanup.run().finally(() => process.exit(130));
    });
  }
  try {
    await preflight();
    process.stdout.write(tlsMode === 'only' ? await benchTlsOnly(cleanup) : report(await bench(cleanup)));
    return 0;
  } catch (err) {
    // After a signal, the runs fail as the cleanup pulls things away: not worth reporting.
    if (!interrupted) process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  } finally {
    note('cleaning up');
    await cleanup.run();
  }
}

process.exitCode = await main();
