// node dist/bench/copy-whole.js: `vircpt copy` as a user runs it, one whole command that starts
// its own export, copies and releases it, against the same done by hand with the C tools:
// `virsh backup-begin` + `nbdcopy --flush URI file` + `virsh domjobabort`, on one lab VM (4 GiB disk,
// 1.5 GiB data) at one checkpoint, in pairs (each other pair in the other order). Prints the
// seconds of each pair, the median speed ratio (ours / by hand: above 1, ours is faster), and
// what start-up costs without any copy: `node -e 0`, `vircpt --version`, `vircpt list`.
// Then the whole command's two parts apart, in pairs too: the fixed cost (`vircpt map`, which
// starts an export, reads the dirty map and releases it, against `virsh backup-begin` +
// `nbdinfo --map` + `virsh domjobabort`), and the copy alone (`vircpt copy` reading through a
// running `vircpt export`, against `nbdcopy --flush` on that export).
// Environment: BENCH_RUNS (pairs, default 5). Removes all it made.
import { chown, mkdtemp, rm, statfs, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { backupXml, exportBitmapName } from '../src/libvirt/backup.js';
import { formatNbdUri } from '../src/nbd/uri.js';
import { VIRCPT } from '../test/lab/cli.js';
import { LAB_URI, Lab, virsh } from '../test/lab/lab.js';
import { requireTools, run } from '../test/lab/tools.js';
import { DATA_SIZE, DISK_SIZE, buildImage } from './fs-image.js';

const GiB = 1024 ** 3;
const RUNS = Number(process.env.BENCH_RUNS ?? 5);

/** Wall and user+sys CPU seconds of a whole command, children included (GNU time). */
async function timed(cmd: string, args: string[]): Promise<{ seconds: number; cpu: number }> {
  const r = await execa('/usr/bin/time', ['-f', 'TIME %e %U %S', cmd, ...args], { reject: false });
  const m = /TIME (\S+) (\S+) (\S+)/.exec(String(r.stderr));
  if (r.exitCode !== 0 || !m) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return { seconds: Number(m[1]), cpu: Number(m[2]) + Number(m[3]) };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

interface Timed { seconds: number; cpu: number }
interface Pair { ours: number; theirs: number; oursCpu: number; theirsCpu: number }

/** RUNS pairs, each other one with the hand-made side first. */
async function inPairs(ours: () => Promise<Timed>, theirs: () => Promise<Timed>): Promise<Pair[]> {
  const rows: Pair[] = [];
  for (let i = 0; i < RUNS; i++) {
    let o: Timed;
    let b: Timed;
    if (i % 2 === 0) { o = await ours(); b = await theirs(); } else { b = await theirs(); o = await ours(); }
    rows.push({ ours: o.seconds, theirs: b.seconds, oursCpu: o.cpu, theirsCpu: b.cpu });
  }
  return rows;
}

/** The median speed ratio of the pairs (ours / by hand: above 1, ours is faster), with its range. */
function ratioLine(rows: Pair[]): string {
  const ratios = rows.map((r) => r.theirs / r.ours);
  return `ratio ours / by hand (speed, median of pairs; min ${Math.min(...ratios).toFixed(2)}, max ${Math.max(...ratios).toFixed(2)}): ` +
    `${median(ratios).toFixed(2)}`;
}

/** Untimed, before each run: no run pays for writing back what another left dirty. */
async function settle(domain: string): Promise<void> {
  await execa('sync');
  // The job slot must be free: domjobabort returns once libvirt ended the job, but check.
  for (let i = 0; i < 100 && !/Job type:\s+None/.test(await virsh('domjobinfo', domain)); i++) await execa('sleep', ['0.05']);
}

async function main(): Promise<void> {
  await requireTools('nbdcopy', 'nbdinfo', 'qemu-img', 'virsh');
  const work = await mkdtemp('/var/tmp/vircptfs-bench-whole-');
  const lab = new Lab('benchwhole');
  let jobDir = '';
  try {
    const fsInfo = await statfs(work);
    if (fsInfo.bavail * fsInfo.bsize < 8 * GiB) throw new Error(`${work}: needs about 8 GiB free`);
    const image = path.join(work, 'disk.qcow2');
    await buildImage(image);
    const vm = await lab.vm({ disks: [{ target: 'vda', size: DISK_SIZE, image }] });
    await rm(image);
    await virsh('checkpoint-create-as', vm.name, 'c0');
    // By hand: a folder of QEMU's (libvirt-qemu) for the socket and the scratch image, outside
    // the bench's own 0700 folder, which QEMU cannot enter.
    jobDir = await mkdtemp('/var/tmp/vircptfs-bench-job-');
    await chown(jobDir, Number(await run('id', ['-u', 'libvirt-qemu'])), 0);
    const socket = path.join(jobDir, 'nbd.sock');
    const xml = path.join(work, 'backup.xml');
    await writeFile(xml, backupXml({ incremental: 'c0', socket, disks: [{ target: 'vda', scratch: path.join(jobDir, 'vda.scratch.qcow2') }], skip: [] }));
    const uri = formatNbdUri({ exportName: 'vda', socketPath: socket });
    const out = path.join(work, 'out');
    const script = `virsh -q -c ${LAB_URI} backup-begin "$1" "$2" >/dev/null && nbdcopy --flush "$3" "$4" && virsh -q -c ${LAB_URI} domjobabort "$1"`;
    const ours = async () => {
      await settle(vm.name);
      const t = await timed(process.execPath, [VIRCPT, '-U', LAB_URI, '-d', vm.name, 'copy', '--name', 'c0', '--out', out]);
      await rm(out, { recursive: true, force: true });
      return t;
    };
    const theirs = async () => {
      await settle(vm.name);
      const t = await timed('sh', ['-c', script, 'sh', vm.name, xml, uri, `${out}.raw`]);
      await rm(`${out}.raw`, { force: true });
      return t;
    };
    const load0 = loadavg()[0]!;
    const rows = await inPairs(ours, theirs);
    // The fixed cost: an export started, its dirty map read, the export released.
    const mapScript = `virsh -q -c ${LAB_URI} backup-begin "$1" "$2" >/dev/null && ` +
      `nbdinfo --map=qemu:dirty-bitmap:${exportBitmapName('vda')} "$3" >/dev/null && virsh -q -c ${LAB_URI} domjobabort "$1"`;
    const fixed = await inPairs(
      async () => { await settle(vm.name); return timed(process.execPath, [VIRCPT, '-U', LAB_URI, '-d', vm.name, 'map', '--name', 'c0']); },
      async () => { await settle(vm.name); return timed('sh', ['-c', mapScript, 'sh', vm.name, xml, uri]); },
    );
    // The copy alone: both read through one running export (`vircpt copy` finds it and leaves it running).
    const started = await run(process.execPath, [VIRCPT, '-U', LAB_URI, '-d', vm.name, 'export', '--name', 'c0', '--json']);
    const running = formatNbdUri({ exportName: 'vda', socketPath: (JSON.parse(started) as { disks: { socket: string }[] }).disks[0]!.socket });
    let copyAlone: Pair[];
    try {
      copyAlone = await inPairs(
        async () => {
          await execa('sync');
          const t = await timed(process.execPath, [VIRCPT, '-U', LAB_URI, '-d', vm.name, 'copy', '--name', 'c0', '--out', out]);
          await rm(out, { recursive: true, force: true });
          return t;
        },
        async () => {
          await execa('sync');
          const t = await timed('nbdcopy', ['--flush', running, `${out}.raw`]);
          await rm(`${out}.raw`, { force: true });
          return t;
        },
      );
    } finally {
      await run(process.execPath, [VIRCPT, '-U', LAB_URI, '-d', vm.name, 'release']);
    }
    const startup = { node: [] as number[], version: [] as number[], list: [] as number[] };
    for (let i = 0; i < 7; i++) {
      startup.node.push((await timed(process.execPath, ['-e', '0'])).seconds);
      startup.version.push((await timed(process.execPath, [VIRCPT, '--version'])).seconds);
      startup.list.push((await timed(process.execPath, [VIRCPT, '-U', LAB_URI, '-d', vm.name, 'list'])).seconds);
    }
    const ratios = rows.map((r) => r.theirs / r.ours);
    console.log(`\nvircpt copy (whole command) vs virsh backup-begin + nbdcopy + virsh domjobabort, ` +
      `${DISK_SIZE / GiB} GiB disk, ${DATA_SIZE / GiB} GiB data, ${RUNS} pairs`);
    for (const r of rows) {
      console.log(`  ours ${r.ours.toFixed(2)} s (CPU ${r.oursCpu.toFixed(2)})   by hand ${r.theirs.toFixed(2)} s (CPU ${r.theirsCpu.toFixed(2)})   ` +
        `ratio ${(r.theirs / r.ours).toFixed(2)}`);
    }
    console.log(`median: ours ${median(rows.map((r) => r.ours)).toFixed(2)} s, by hand ${median(rows.map((r) => r.theirs)).toFixed(2)} s; ` +
      `ratio ours / by hand (speed, median of pairs; min ${Math.min(...ratios).toFixed(2)}, max ${Math.max(...ratios).toFixed(2)}): ` +
      `${median(ratios).toFixed(2)}  (target >= 1.0: ${median(ratios) >= 1 ? 'met' : 'not met'})`);
    console.log(`start-up, median of 7 (s): node -e 0 ${median(startup.node).toFixed(3)}, vircpt --version ${median(startup.version).toFixed(3)}, ` +
      `vircpt list ${median(startup.list).toFixed(3)}`);
    const ms = (xs: number[]) => `${(median(xs) * 1000).toFixed(0)} ms`;
    console.log(`the parts apart, ${RUNS} pairs each:`);
    console.log(`  fixed cost, vircpt map vs virsh backup-begin + nbdinfo --map + virsh domjobabort: ours ${ms(fixed.map((r) => r.ours))}, ` +
      `by hand ${ms(fixed.map((r) => r.theirs))} (medians; ours - by hand, median of pairs: ${ms(fixed.map((r) => r.ours - r.theirs))})`);
    console.log(`  copy alone through one running export, vircpt copy vs nbdcopy --flush: ours ${median(copyAlone.map((r) => r.ours)).toFixed(2)} s ` +
      `(CPU ${median(copyAlone.map((r) => r.oursCpu)).toFixed(2)}), nbdcopy ${median(copyAlone.map((r) => r.theirs)).toFixed(2)} s ` +
      `(CPU ${median(copyAlone.map((r) => r.theirsCpu)).toFixed(2)}); ${ratioLine(copyAlone)}`);
    console.log(`load average (1 min) before ${load0.toFixed(2)}, after ${loadavg()[0]!.toFixed(2)} (${cpus().length} CPUs)`);
  } finally {
    await lab.cleanup(); // destroys the VM, which ends any job left
    await rm(work, { recursive: true, force: true });
    if (jobDir) await rm(jobDir, { recursive: true, force: true });
  }
}

await main();
