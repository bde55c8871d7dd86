// node dist/bench/copy.js: on one libvirt pull-mode export of a lab VM (4 GiB disk, 1.5 GiB
// data), in the same run: our NBD client reading everything to nowhere against `nbdcopy URI
// null:`, then `vircpt copy` against `nbdcopy URI file`. For each: MB/s (disk size / wall time),
// the ratio ours/nbdcopy (pair by pair), CPU seconds per GiB of data, and peak RSS. The copies
// write a sparse raw file on the same filesystem, removed after each run, with a `sync` before
// each run (see settle()). Prints each pair and the load average: the machine may be shared.
// Removes all it made.
import { mkdtemp, rm, statfs } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { Lab } from '../test/lab/lab.js';
import { VIRCPT } from '../test/lab/cli.js';
import { requireTools } from '../test/lab/tools.js';
import { nbdUri, type ExportRecord } from '../src/exports/export.js';
import { DATA_SIZE, DISK_SIZE, buildImage } from './fs-image.js';
import { timeOurs } from './nbd-client.js';

const GiB = 1024 ** 3;
const RUNS = Number(process.env.BENCH_RUNS ?? 5);
/** Extra node flags for vircpt (e.g. --cpu-prof --cpu-prof-dir=DIR, to see where its time goes). */
const NODE_FLAGS = (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);

interface Sample { seconds: number; cpu: number; rssMiB: number }

/** Wall, user+sys and peak RSS of a whole command, from GNU time. */
async function timed(cmd: string, args: string[]): Promise<Sample> {
  const r = await execa('/usr/bin/time', ['-f', 'TIME %e %U %S %M', cmd, ...args], { reject: false });
  if (r.exitCode !== 0) throw new Error(`${cmd} failed: ${r.stderr}`);
  const m = /TIME (\S+) (\S+) (\S+) (\d+)/.exec(String(r.stderr));
  if (!m) throw new Error(`no timing from ${cmd}: ${r.stderr}`);
  return { seconds: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), rssMiB: Number(m[4]) / 1024 };
}

/**
 * Before each timed run: `sync`, untimed, so that no run pays for writing back what an earlier
 * one (of either program) left dirty, nor for the journal commit of removing its file. nbdcopy
 * writes back and evicts as it goes, up to its last few windows; a copy through the page cache
 * would leave its whole output dirty. (Each output is removed right after its run, so dirty
 * pages of a removed file are mostly dropped unwritten; the sync takes what is left.)
 */
async function settle(): Promise<void> {
  await execa('sync');
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Our client with its defaults (one connection), reading the whole export to nowhere, in this process. */
async function readToNull(socketPath: string, exportName: string): Promise<Sample> {
  const { seconds, cpuSeconds } = await timeOurs({ socketPath, exportName, metaContexts: ['base:allocation'] }, 8);
  return { seconds, cpu: cpuSeconds, rssMiB: process.resourceUsage().maxRSS / 1024 };
}

/**
 * `n` pairs, each other one in the other order: the machine's drift (other load, page cache,
 * writeback) hits both of a pair alike, and the ratio is taken pair by pair.
 */
async function inPairs(n: number, a: () => Promise<void>, b: () => Promise<void>): Promise<void> {
  for (let i = 0; i < n; i++) {
    if (i % 2 === 0) { await a(); await b(); } else { await b(); await a(); }
  }
}

interface Pairs { title: string; ours: string; theirs: string; rows: { ours: Sample[]; theirs: Sample[] } }

/** Best and median MB/s, CPU per GiB of data and peak RSS of both; the median of the pair-by-pair speed ratios. */
function report({ title, ours, theirs, rows }: Pairs): void {
  const mbs = (s: Sample) => DISK_SIZE / 1e6 / s.seconds;
  console.log(`\n${title}, ${rows.ours.length} runs each`);
  console.log(`${'reader'.padEnd(28)} ${'best MB/s'.padStart(10)} ${'median'.padStart(8)} ${'CPU s/GiB'.padStart(10)} ${'peak RSS MiB'.padStart(13)}`);
  for (const [name, xs] of [[ours, rows.ours], [theirs, rows.theirs]] as const) {
    const cpu = median(xs.map((s) => s.cpu)) / (DATA_SIZE / GiB);
    console.log(`${name.padEnd(28)} ${Math.max(...xs.map(mbs)).toFixed(0).padStart(10)} ` +
      `${median(xs.map(mbs)).toFixed(0).padStart(8)} ${cpu.toFixed(2).padStart(10)} ${Math.max(...xs.map((s) => s.rssMiB)).toFixed(0).padStart(13)}`);
  }
  const pairs = rows.ours.map((s, i) => rows.theirs[i]!.seconds / s.seconds);
  const ratio = median(pairs);
  console.log(`pairs nbdcopy s / ours s: ${pairs.map((r, i) => `${rows.theirs[i]!.seconds.toFixed(2)}/${rows.ours[i]!.seconds.toFixed(2)}=${r.toFixed(2)}`).join(' ')}`);
  console.log(`ratio ours / nbdcopy (speed, median of ${pairs.length} pairs; min ${Math.min(...pairs).toFixed(2)}, max ${Math.max(...pairs).toFixed(2)}): ` +
    `${ratio.toFixed(2)}  (target >= 1.0: ${ratio >= 1 ? 'met' : 'not met'})`);
}

async function main(): Promise<void> {
  await requireTools('nbdcopy', 'qemu-img', 'virsh');
  const work = await mkdtemp('/var/tmp/vircptfs-bench-copy-');
  const fsInfo = await statfs(work);
  if (fsInfo.bavail * fsInfo.bsize < 8 * GiB) throw new Error(`${work}: needs about 8 GiB free`);
  const lab = new Lab('benchcopy');
  let vmName = '';
  const stop = () => void cleanup().finally(() => process.exit(130));
  process.once('SIGINT', stop);
  async function cleanup(): Promise<void> {
    if (vmName) await execa(process.execPath, [VIRCPT, '-d', vmName, 'release'], { reject: false });
    await lab.cleanup();
    await rm(work, { recursive: true, force: true });
  }
  try {
    const image = path.join(work, 'disk.qcow2');
    await buildImage(image);
    const vm = await lab.vm({ disks: [{ target: 'vda', size: DISK_SIZE, image }] });
    await rm(image);
    vmName = vm.name;
    await execa('virsh', ['-q', 'checkpoint-create-as', vm.name, 'c0']);
    const ex = await execa(process.execPath, [VIRCPT, '-d', vm.name, 'export', '--name', 'c0', '--json']);
    const rec = JSON.parse(ex.stdout) as ExportRecord;
    const disk = rec.disks[0]!;
    const uri = nbdUri(disk);
    const reads: Pairs = { title: 'whole export read to nowhere', ours: 'ours: NbdClient + readAll', theirs: 'nbdcopy URI null:', rows: { ours: [], theirs: [] } };
    const copies: Pairs = { title: `copy of a ${DISK_SIZE / GiB} GiB disk (${DATA_SIZE / GiB} GiB data) to a sparse file`, ours: 'vircpt copy', theirs: 'nbdcopy URI file', rows: { ours: [], theirs: [] } };
    const out = path.join(work, 'out');
    const runs = {
      readNbdcopy: async () => { reads.rows.theirs.push(await timed('nbdcopy', [uri, 'null:'])); },
      readOurs: async () => { reads.rows.ours.push(await readToNull(disk.socket, disk.exportName)); },
      nbdcopy: async () => {
        await settle();
        copies.rows.theirs.push(await timed('nbdcopy', [uri, `${out}.raw`]));
        await rm(`${out}.raw`, { force: true });
      },
      // vircpt copy reads through the running export (and leaves it running).
      ours: async () => {
        await settle();
        copies.rows.ours.push(await timed(process.execPath, [...NODE_FLAGS, VIRCPT, '-d', vm.name, 'copy', '--name', 'c0', '--out', out]));
        await rm(out, { recursive: true, force: true });
      },
    };
    const load0 = loadavg()[0]!;
    await readToNull(disk.socket, disk.exportName); // warms the image's page cache for both, and V8 for ours; not counted
    await inPairs(RUNS, runs.readNbdcopy, runs.readOurs);
    await inPairs(RUNS, runs.nbdcopy, runs.ours);
    report(reads);
    report(copies);
    console.log(`\nload average (1 min) before ${load0.toFixed(2)}, after ${loadavg()[0]!.toFixed(2)} (${cpus().length} CPUs); ` +
      'reading to nowhere: ours runs in this process (RSS: this process), nbdcopy as a command');
  } finally {
    process.off('SIGINT', stop);
    await cleanup();
  }
}

await main();
