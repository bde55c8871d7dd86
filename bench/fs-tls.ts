// npm run bench's TLS rows (BENCH_TLS=0 skips them, BENCH_TLS=only runs nothing else): vircptfs
// mounting the lab's qemu+tls:// source (scripts/lab-remote.sh), so its backup job's NBD server
// listens on 127.0.0.1 with TLS and our own client reads it, against nbdfuse over nbds:// from
// qemu-nbd serving the same image with the lab's server certificates. Cold dd and cat, in rounds
// that alternate which goes first; CPU seconds per GiB of data for the FUSE server and for the
// NBD server behind it (QEMU of the VM, qemu-nbd), since both ends pay for TLS.
//
// nbdfuse (libnbd 1.14) takes no certificate folder: a URI's tls-certificates is refused ("local
// file access ... is not allowed") and root's folder is always /etc/pki/libnbd. So it runs in a
// mount namespace of its own where /etc is an overlay holding pki/libnbd with the lab's client
// certificates (the host's /etc is untouched), and the bench reads its file through
// /proc/PID/root; its FUSE mount ends with the process and its namespace.
import { randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, mkdtemp, open, readFile, rm, rmdir, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { LabVm } from '../test/lab/lab.js';
import { mountFs } from '../test/lab/mount.js';
import { remoteLab, serverCerts } from '../test/lab/remote.js';
import { startQemuNbdTcp } from '../test/nbd/servers.js';
import { best, measure, median, type Sample, type TestName } from './fs-measure.js';
import { endChild, once, startChild, waitFor, type Subject } from './fs-subjects.js';
import { requireTools } from '../test/lab/tools.js';

export const VIRCPTFS_TLS = 'vircptfs qemu+tls';
export const NBDFUSE_TLS = 'nbdfuse nbds://';
export const TLS_TESTS: readonly TestName[] = ['dd', 'cat'];

const GiB = 1024 ** 3;
/** Ports of the bench's own (the remote tests take 20000-35999). */
const PORT_BASE = 36000 + (process.pid % 500) * 8;

type Undo = (what: string, fn: () => Promise<unknown>) => void;

/** QEMU's pid of a running lab VM (libvirt's pid file). */
async function qemuPid(vm: LabVm): Promise<number> {
  return Number((await readFile(`/run/libvirt/qemu/${vm.name}.pid`, 'utf8')).trim());
}

/**
 * The two TLS subjects: vircptfs on `vm` (which must have no backup job: one per domain) through
 * qemu+tls, its export started and then held open (its start is not what is timed), and nbdfuse
 * over qemu-nbd of `image`.
 */
export async function startTlsSubjects(add: Undo, vm: LabVm, checkpoint: string, image: string, work: string, opts: string[]): Promise<Subject[]> {
  const lab = remoteLab();
  const scratch = await mkdtemp(path.join(work, 'tls-scratch-'));
  await chmod(scratch, 0o1777); // as a hypervisor's /var/tmp: QEMU's user creates the scratch file
  const m = await mountFs({ source: lab.tlsUri, options: [`domain=${vm.name}`, 'nbd_tls=require', `nbd_certs=${lab.nbdCerts}`,
    `scratch=${scratch}`, `nbd_ports=${PORT_BASE}-${PORT_BASE + 7}`, ...opts] });
  add('unmount vircptfs (TLS)', () => m.cleanup());
  const file = m.path(vm.name, checkpoint, 'sda.raw');
  const keeper: FileHandle = await open(file, 'r');
  add('close the held TLS file', once(() => keeper.close()));
  await keeper.read(Buffer.alloc(4096), 0, 4096, 0);
  const fs: Subject = { name: VIRCPTFS_TLS, file, pid: m.pid, peerPid: await qemuPid(vm), stop: once(() => m.cleanup()) };

  const server = await startQemuNbdTcp({ image, format: 'qcow2', host: '127.0.0.1', tlsDir: serverCerts(lab), exportName: 'sda' });
  add('stop qemu-nbd (TLS)', () => server.stop());
  const nbd = await startNbdfuseTls(`nbds://127.0.0.1:${server.port}/sda`, lab.nbdCerts, work, server.pid);
  add('stop nbdfuse (TLS)', () => nbd.stop());
  return [fs, nbd];
}

/** nbdfuse over nbds:// with the certificates in `certs`, in a mount namespace of its own (above). */
async function startNbdfuseTls(uri: string, certs: string, work: string, peerPid: number): Promise<Subject> {
  await requireTools('nbdfuse', 'unshare');
  const ns = await mkdtemp(path.join(work, 'nbdfuse-ns-'));
  await mkdir(path.join(ns, 'upper/pki/libnbd'), { recursive: true });
  await mkdir(path.join(ns, 'work'));
  for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) await copyFile(path.join(certs, f), path.join(ns, 'upper/pki/libnbd', f));
  const dir = `/tmp/vcptbench-nbdfuse-${process.pid}-${randomBytes(3).toString('hex')}`;
  await mkdir(dir, { mode: 0o755 });
  const pidFile = path.join(ns, 'nbdfuse.pid');
  // unshare and sh exec: the child's pid is nbdfuse's.
  const p = startChild('unshare', ['-m', '--propagation', 'private', 'sh', '-c',
    'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc && shift && exec nbdfuse "$@"',
    'sh', ns, '-r', '-P', pidFile, path.join(dir, 'sda.raw'), uri]);
  const stop = once(async () => {
    await endChild(p.child, p.exited, true);
    await rmdir(dir).catch(() => undefined);
    await rm(ns, { recursive: true, force: true });
  });
  try {
    await waitFor('nbdfuse (TLS) to serve', 30_000, async () => {
      if (p.child.exitCode !== null) throw new Error(`nbdfuse (TLS) exited (${p.child.exitCode}): ${p.stderr()}`);
      return (await readFile(pidFile, 'utf8').catch(() => '')) !== '';
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { name: NBDFUSE_TLS, file: `/proc/${p.child.pid}/root${dir}/sda.raw`, pid: p.child.pid!, peerPid, stop };
}

/** Cold runs of TLS_TESTS, `runs` rounds each, the subjects taking turns at going first. */
export async function tlsRuns(subjects: Subject[], runs: number, size: number, work: string,
  record: (s: Subject, test: TestName, x: Sample) => void): Promise<void> {
  let round = 0;
  for (const test of TLS_TESTS) {
    for (let i = 0; i < runs; i++, round++) {
      const order = round % 2 === 0 ? subjects : [...subjects].reverse();
      for (const s of order) record(s, test, await measure(s, test, size, work, true));
    }
  }
}

/** The TLS table: MB/s best (median), the ratio of best throughputs, CPU s/GiB of data (median) of each end. */
export function tlsReport(samples: Map<string, Map<TestName, Sample[]>>, size: number, dataBytes: number): string[] {
  const of = (s: string, t: TestName) => samples.get(s)?.get(t) ?? [];
  const rate = (xs: Sample[], pick: (t: number[]) => number) => size / 1e6 / pick(xs.map((x) => x.seconds));
  const perGiB = (xs: number[]) => (median(xs) / (dataBytes / GiB)).toFixed(2);
  const lines = ['NBD over TLS (TLS 1.3 on 127.0.0.1; CPU s per GiB of data: FUSE server + its NBD server, medians):',
    `${'test'.padEnd(12)}${VIRCPTFS_TLS.padStart(20)}${NBDFUSE_TLS.padStart(18)}${'ratio'.padStart(8)}` +
    `${'CPU vircptfs+QEMU'.padStart(20)}${'CPU nbdfuse+qemu-nbd'.padStart(22)}`];
  for (const test of TLS_TESTS) {
    const a = of(VIRCPTFS_TLS, test);
    const b = of(NBDFUSE_TLS, test);
    if (a.length === 0 || b.length === 0) continue;
    const cell = (xs: Sample[]) => `${rate(xs, best).toFixed(0)} (${rate(xs, median).toFixed(0)})`;
    const cpu = (xs: Sample[]) => `${perGiB(xs.map((x) => x.cpu))} + ${perGiB(xs.map((x) => x.peerCpu ?? 0))}`;
    lines.push(`${`${test} (cold)`.padEnd(12)}${cell(a).padStart(20)}${cell(b).padStart(18)}` +
      `${`${(rate(a, best) / rate(b, best)).toFixed(2)} x`.padStart(8)}${cpu(a).padStart(20)}${cpu(b).padStart(22)}`);
  }
  return lines;
}
