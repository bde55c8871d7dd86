// vircptfs as an ordinary filesystem: installed by scripts/install.sh (npm install -g of the
// packed repository, plus the mount(8) helper), mounted by mount(8) (with
// and without an environment: mount(8) strips PATH, systemd gives it next to nothing) and from
// /etc/fstab, unmounted by umount(8), recovered after kill -9, and removed by uninstall.sh.
// One file on purpose: the install's paths (/usr/local, /sbin) are machine-wide, so the tests
// that install, mount through the installed helper and uninstall must not run side by side.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { access, chown, constants, mkdir, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { backupXml } from '../../src/libvirt/backup.js';
import { LAB_URI, Lab, virsh, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';
import { requireTools } from '../lab/tools.js';
import { asUser, LabUser } from '../lab/users.js';
import { BIN, HELPER, INSTALLED_JS, InstallState, LIBDIR, REPO, installedPaths, runScript, type ScriptRun } from './install-state.js';
import {
  DEFAULT_LOG, FstabBackup, cleanupMountpoint, daemonOf, daemonsOf, errorLines, freshDir, gone, logTail, mountEntry,
  processState, runProgram, utabEntries, waitFor, which, type Run,
} from './system.js';

const MiB = 1024 * 1024;
const PATTERN = 0xab;
/** The PATH of a login shell: what "on the PATH" means for a user. */
const USER_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** mount(8) "EXIT STATUS", as the helper reports it. */
const MOUNT_USAGE = 1;
const MOUNT_FAILURE = 32;

async function readAt(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** The NBD socket of a domain's running backup job (virsh backup-dumpxml). */
async function jobSocket(domain: string): Promise<string | undefined> {
  const xml = await virsh('backup-dumpxml', domain).catch(() => '');
  return /<server[^>]*\ssocket='([^']+)'/.exec(xml)?.[1];
}

/** The node the install wrote into the helper. */
function nodeOf(helper: string): string {
  const node = /^VIRCPTFS_NODE='(\/[^']+)'$/m.exec(helper)?.[1];
  assert.ok(node, 'the helper names the node found by install.sh');
  return node;
}

describe('vircptfs through install.sh, mount(8), fstab and umount', () => {
  const lab = new Lab('mount');
  let saved: InstallState | undefined;
  let fstab: FstabBackup | undefined;
  let mountBin = '';
  let umountBin = '';
  let vm: LabVm;
  let other: LabVm;
  let firstInstall: ScriptRun | undefined;

  const mount = (args: string[], bare = false): Promise<Run> => runProgram(mountBin, args, bare);
  const mountVircpt = (dir: string, options: string, bare = false) =>
    mount(['-t', 'fuse.vircptfs', LAB_URI, dir, '-o', options], bare);

  /** umount(8), then: the daemon exits, and nothing of the mount is left anywhere. */
  async function unmountsClean(dir: string, pid: number, bare = false, log = DEFAULT_LOG): Promise<void> {
    const u = await runProgram(umountBin, [dir], bare);
    assert.equal(u.code, 0, u.stderr);
    if (!(await waitFor(() => gone(pid), 20_000))) {
      assert.fail(`the daemon ${pid} did not exit after umount: ${await processState(pid)}\n${await logTail(log, dir)}`);
    }
    assert.equal(await mountEntry(dir), undefined, 'nothing mounted');
    assert.deepEqual(await daemonsOf(dir), [], 'no vircptfs process');
    assert.equal(await vm.jobType(), 'None', 'no backup job');
    assert.deepEqual(await leftoversOf(vm.name), [], 'no socket, pid file or scratch file');
    assert.deepEqual(await utabEntries(dir), [], 'no utab entry');
  }

  before(async () => {
    await requireTools('virsh', 'fusermount3', 'qemu-img');
    [mountBin, umountBin] = [await which('mount'), await which('umount')];
    fstab = await FstabBackup.take();
    saved = await InstallState.setAside();
    // Every test mounts through the installed helper; the first one looks at what was installed.
    firstInstall = await runScript('install.sh');
    assert.equal(firstInstall.code, 0, firstInstall.output);
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 64 * MiB }] });
    other = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 64 * MiB }] });
    await virsh('checkpoint-create-as', vm.name, 'c1');
    await vm.write('sda', MiB, MiB, PATTERN);
  });

  after(async () => {
    await fstab?.restore();
    await saved?.restore();
    await lab.cleanup();
  });

  it('install.sh puts vircpt, vircptfs and /sbin/mount.fuse.vircptfs in place, idempotently', async () => {
    assert.match(firstInstall?.output ?? '', /^\[install\] installed: /m);
    // npm ran the package's install script (it built the addon), and without a policy warning.
    assert.doesNotMatch(firstInstall?.output ?? '', /npm did not build the FUSE addon|install-scripts/);
    assert.deepEqual(installedPaths().sort(), [BIN.vircpt, BIN.vircptfs, HELPER, LIBDIR].sort());
    const onPath = { env: { PATH: USER_PATH }, extendEnv: false, reject: false } as const;
    for (const prog of ['vircpt', 'vircptfs'] as const) {
      assert.equal(String((await execa('sh', ['-c', `command -v ${prog}`], onPath)).stdout), BIN[prog]);
    }
    const help = await execa('vircpt', ['--help'], onPath);
    assert.equal(help.exitCode, 0, String(help.stderr));
    assert.match(String(help.stdout), /^Usage: vircpt /);
    const pkg = JSON.parse(await readFile(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    const version = await execa('vircptfs', ['--version'], onPath);
    assert.equal(String(version.stdout), `vircptfs ${pkg.version}`);
    for (const prog of ['vircpt', 'vircptfs'] as const) {
      assert.equal(realpathSync(BIN[prog]), path.join(LIBDIR, `dist/src/bin/${prog}.js`), `${prog} is npm's link into the package`);
    }
    await access(HELPER, constants.X_OK);
    const helper = await readFile(HELPER, 'utf8');
    assert.ok(helper.includes(`VIRCPTFS_JS='${INSTALLED_JS}'`), 'the helper names the installed vircptfs');
    assert.ok(!helper.includes(REPO) && !(await readFile(BIN.vircptfs, 'utf8')).includes(REPO), 'independent of the repository');
    const addon = path.join(LIBDIR, 'native/build/Release/vircptfs_fuse.node');
    const loaded = await execa(process.execPath, ['-p', `typeof require(${JSON.stringify(addon)}).mount`]);
    assert.equal(loaded.stdout, 'function', 'the installed copy carries the FUSE addon');

    // Every option reaches vircptfs as it came (vircptfs ignores mount(8)'s own); -f (fake) mounts nothing.
    const opts = 'rw,domain=a,_netdev,nofail,noauto,user,x-systemd.automount,comment=x';
    const fake = await runProgram(HELPER, [LAB_URI, '/nonexistent', '-s', '-f', '-n', '-v', '-o', opts, '-t', 'fuse.vircptfs'], true);
    assert.equal(fake.code, 0, fake.stderr);
    assert.equal(fake.stderr, `mount.fuse.vircptfs: running: ${nodeOf(helper)} ${INSTALLED_JS} -o ${opts} ${LAB_URI} /nonexistent`);
    const wrongType = await runProgram(HELPER, [LAB_URI, '/nonexistent', '-t', 'fuse.sshfs'], true);
    assert.equal(wrongType.code, MOUNT_USAGE);
    assert.equal(errorLines(wrongType.stderr).length, 1, wrongType.stderr);

    const again = await runScript('install.sh');
    assert.equal(again.code, 0, again.output);
    assert.equal(await readFile(HELPER, 'utf8'), helper);
  });

  for (const bare of [false, true]) {
    it(`mount -t fuse.vircptfs returns once the tree lists, umount leaves nothing${bare ? ' (env -i)' : ''}`, async (t) => {
      const dir = await freshDir('t');
      t.after(() => cleanupMountpoint(dir));
      const r = await mountVircpt(dir, `domain=${vm.name},idle=2,nofreeze`, bare);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '');
      assert.deepEqual(await readdir(dir), [vm.name], 'lists right after mount(8) returns');
      assert.equal((await mountEntry(dir))?.type, 'fuse.vircptfs');
      const pid = await daemonOf(dir);
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
      assert.equal(argv[1], INSTALLED_JS, 'the installed vircptfs serves it');

      const data = await readAt(path.join(dir, vm.name, 'c1', 'sda.raw'), MiB, MiB);
      assert.ok(data.equals(Buffer.alloc(MiB, PATTERN)), 'the guest write before the export is there');
      assert.match((await jobSocket(vm.name)) ?? '', new RegExp(`/fs-${pid}-\\d+/`), 'the export is the daemon\'s');

      const busy = await mountVircpt(dir, `domain=${vm.name}`, bare);
      assert.equal(busy.code, MOUNT_FAILURE);
      assert.deepEqual(errorLines(busy.stderr).length, 1, busy.stderr);
      assert.match(busy.stderr, /^vircptfs: mountpoint .* is busy: a fuse\.vircptfs filesystem is mounted there$/m);
      assert.deepEqual(await daemonsOf(dir), [pid], 'the refused mount left no process');
      assert.deepEqual(await readdir(dir), [vm.name], 'the first mount still serves');

      await unmountsClean(dir, pid, bare);
    });
  }

  it('an fstab entry (_netdev,nofail,noauto) mounts with `mount MNT` and no environment', async (t) => {
    const dir = await freshDir('fstab');
    t.after(() => cleanupMountpoint(dir));
    t.after(() => fstab?.restore());
    await fstab!.append(`${LAB_URI} ${dir} fuse.vircptfs domain=${vm.name},_netdev,nofail,noauto 0 0`);
    const r = await mount([dir], true);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await readdir(dir), [vm.name]);
    assert.deepEqual(await readdir(path.join(dir, vm.name)), ['c1']);
    const pid = await daemonOf(dir);
    assert.ok((await readAt(path.join(dir, vm.name, 'c1', 'sda.raw'), MiB, 4096)).equals(Buffer.alloc(4096, PATTERN)));
    await unmountsClean(dir, pid, true);
  });

  it('a daemon that cannot start: non-zero, one line on stderr, nothing mounted, no process', async (t) => {
    const dir = await freshDir('fail');
    const busy = await freshDir('busy');
    t.after(() => cleanupMountpoint(dir));
    t.after(() => cleanupMountpoint(busy));
    assert.equal((await mount(['-t', 'tmpfs', 'tmpfs', busy])).code, 0);
    const cases = [
      { what: 'a bad option', source: LAB_URI, at: dir, opts: `domain=${vm.name},bogus=1`, code: MOUNT_USAGE, line: /unknown option: bogus=1/ },
      { what: 'an unreachable URI', source: 'qemu:///system?socket=/nonexistent/libvirt-sock', at: dir, opts: 'idle=2', code: MOUNT_FAILURE, line: /cannot reach libvirt at qemu:\/\/\/system\?socket=/ },
      { what: 'a missing mountpoint', source: LAB_URI, at: path.join(dir, 'missing'), opts: 'idle=2', code: MOUNT_USAGE, line: /mountpoint .*\/missing does not exist/ },
      { what: 'a busy mountpoint', source: LAB_URI, at: busy, opts: 'idle=2', code: MOUNT_FAILURE, line: /mountpoint .* is busy: a tmpfs filesystem is mounted there/ },
    ];
    for (const c of cases) {
      const before = await mountEntry(c.at);
      const r = await mount(['-t', 'fuse.vircptfs', c.source, c.at, '-o', c.opts], true);
      assert.equal(r.code, c.code, `${c.what}: exit ${r.code}: ${r.stderr}`);
      const lines = errorLines(r.stderr);
      assert.equal(lines.length, 1, `${c.what}: ${r.stderr}`);
      assert.match(lines[0]!, /^vircptfs: /);
      assert.match(lines[0]!, c.line);
      assert.deepEqual(await mountEntry(c.at), before, `${c.what}: nothing mounted`);
      assert.ok(await waitFor(async () => (await daemonsOf(c.at)).length === 0, 5000), `${c.what}: no vircptfs process left`);
    }
    assert.equal((await runProgram(umountBin, [busy])).code, 0);
  });

  it('after kill -9 of the daemon with a file open, mounting again recovers; a foreign job stays', async (t) => {
    const dir = await freshDir('kill');
    t.after(() => cleanupMountpoint(dir));
    // Someone else's backup job on another domain, its socket in a folder QEMU may write.
    const foreignDir = `/var/tmp/vircptfs-mt-foreign-${process.pid}-${randomBytes(3).toString('hex')}`;
    await mkdir(foreignDir, { mode: 0o700 });
    t.after(() => rm(foreignDir, { recursive: true, force: true }));
    const qemuUser = await execa('id', ['-u', 'libvirt-qemu']);
    await chown(foreignDir, Number(qemuUser.stdout), 0);
    const foreignSocket = path.join(foreignDir, 'foreign.sock');
    const xmlFile = path.join(foreignDir, 'backup.xml');
    await writeFile(xmlFile, backupXml({ socket: foreignSocket, disks: [{ target: 'sda', scratch: `${foreignDir}/sda.scratch.qcow2` }], skip: [] }));
    await virsh('backup-begin', other.name, xmlFile);
    t.after(async () => { if ((await jobSocket(other.name)) === foreignSocket) await virsh('domjobabort', other.name); });

    assert.equal((await mountVircpt(dir, `domain=${vm.name},idle=2,nofreeze`)).code, 0);
    const pid = await daemonOf(dir);
    const file = path.join(dir, vm.name, 'c1', 'sda.raw');
    const holder = execa('sh', ['-c', 'exec sleep 1000 < "$1"', 'holder', file], { reject: false, stdio: 'ignore' });
    t.after(async () => { holder.kill('SIGKILL'); await holder; });
    // The shell opens the file, then becomes `sleep`: the open (and so the export) is complete.
    const comm = () => readFile(`/proc/${holder.pid}/comm`, 'utf8').catch(() => '');
    assert.ok(await waitFor(async () => (await comm()) === 'sleep\n', 30_000), 'the file is open');
    assert.match((await jobSocket(vm.name)) ?? '', new RegExp(`/fs-${pid}-\\d+/`));

    process.kill(pid, 'SIGKILL');
    assert.ok(await waitFor(() => gone(pid), 10_000));
    // A dead mount is left behind. While the kernel tears the connection down a request can also
    // fail with ECONNABORTED or EIO (seen once under load); what stays is ENOTCONN/ECONNABORTED.
    let lastCode = '';
    const settled = await waitFor(async () => {
      lastCode = await readdir(dir).then(() => 'answered', (e: NodeJS.ErrnoException) => e.code ?? String(e));
      return lastCode === 'ENOTCONN' || lastCode === 'ECONNABORTED';
    }, 5000);
    assert.ok(settled, `a dead mount is left behind (readdir: ${lastCode})`);

    const again = await mountVircpt(dir, `domain=${vm.name},idle=2,nofreeze`);
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(await readdir(dir), [vm.name]);
    const pid2 = await daemonOf(dir);
    assert.equal(await vm.jobType(), 'None', 'the killed daemon\'s job was aborted');
    assert.deepEqual(await leftoversOf(vm.name), [], 'and its sockets and scratch files removed');
    assert.equal(await jobSocket(other.name), foreignSocket, 'the foreign job still runs');

    assert.ok((await readAt(file, MiB, MiB)).equals(Buffer.alloc(MiB, PATTERN)));
    assert.match((await jobSocket(vm.name)) ?? '', new RegExp(`/fs-${pid2}-\\d+/`), 'a new open starts a new export');
    holder.kill('SIGKILL');
    await holder;
    await unmountsClean(dir, pid2);
    assert.equal(await jobSocket(other.name), foreignSocket, 'the foreign job still runs after umount');
  });

  it('-o log=FILE: the mount, export start and release lines go to FILE', async (t) => {
    const dir = await freshDir('log');
    const logDir = `/var/tmp/vircptfs-mt-log-${process.pid}-${randomBytes(3).toString('hex')}`;
    t.after(() => cleanupMountpoint(dir));
    t.after(() => rm(logDir, { recursive: true, force: true }));
    const log = path.join(logDir, 'vircptfs.log');
    assert.equal((await mountVircpt(dir, `domain=${vm.name},idle=1,nofreeze,log=${log}`)).code, 0);
    const pid = await daemonOf(dir);
    const text = () => readFile(log, 'utf8').catch(() => '');
    assert.match(await text(), new RegExp(`info: mounted ${LAB_URI} at ${dir}$`, 'm'));
    await readAt(path.join(dir, vm.name, 'c1', 'sda.raw'), 0, 4096);
    assert.match(await text(), new RegExp(`info: export started: ${vm.name} \\(checkpoint c1\\)( socket=\\S+)?$`, 'm'));
    assert.ok(await waitFor(async () => (await text()).includes(`export released: ${vm.name}`), 15_000),
      `released once idle:\n${await text()}`);
    await unmountsClean(dir, pid, false, log);
    assert.match(await text(), new RegExp(`info: stopped: ${dir}$`, 'm'));
  });

  it('the README\'s group grant through mount(8): allow_other,gid=GROUP,umask=0027 (an fstab line), as a member and as nobody', async (t) => {
    const dir = await freshDir('grant');
    const member = await new LabUser('mnt').create();
    t.after(() => member.remove());
    t.after(() => cleanupMountpoint(dir));
    t.after(() => fstab?.restore());
    await fstab!.append(`${LAB_URI} ${dir} fuse.vircptfs domain=${vm.name},allow_other,gid=${member.group},umask=0027,idle=1,nofreeze,_netdev,nofail,noauto 0 0`);
    const r = await mount([dir], true);
    assert.equal(r.code, 0, r.stderr);
    const pid = await daemonOf(dir);
    const disk = path.join(dir, vm.name, 'c1', 'sda.raw');
    assert.equal((await member.run('stat', ['-c', '%a %U %G', disk])).stdout.trim(), `440 root ${member.group}`);
    const read = await member.run('sh', ['-c', 'head -c 2097152 "$1" | tail -c 4096 | od -An -v -tx1 | sort -u', 'sh', disk]);
    assert.equal(read.stdout.trim(), Array(16).fill(PATTERN.toString(16)).join(' '), 'the member reads the guest write');
    await waitFor(async () => (await vm.jobType()) === 'None', 15_000);
    const denied = await asUser('nobody', 'head', ['-c', '1', disk]);
    assert.match(denied.stderr, /Permission denied/);
    assert.equal(await vm.jobType(), 'None', 'nobody\'s refused open started no job');
    await unmountsClean(dir, pid, true);
  });

  // libvirt starts each QEMU in a mount namespace of its own, a copy of the host's. Where / is
  // not shared (no systemd: this lab, sysvinit, containers), umount in the host does not reach
  // that copy, the FUSE connection lives on, and only the daemon's own table shows the unmount.
  it('umount stops the daemon even when a VM started after the mount holds a copy of it', async (t) => {
    const dir = await freshDir('ns');
    t.after(() => cleanupMountpoint(dir));
    assert.equal((await mountVircpt(dir, `domain=${vm.name},idle=60,nofreeze`)).code, 0);
    const pid = await daemonOf(dir);
    await readAt(path.join(dir, vm.name, 'c1', 'sda.raw'), 0, 4096);
    const late = await lab.vm({ disks: [{ target: 'vda', size: 16 * MiB }] });
    const qemu = (await execa('pgrep', ['-f', `guest=${late.name},`])).stdout.trim();
    const copies = (await readFile(`/proc/${qemu}/mountinfo`, 'utf8')).split('\n').filter((l) => l.includes(` ${dir} `));
    t.diagnostic(`the new VM's QEMU (pid ${qemu}) has ${copies.length} copy(ies) of the mount`);
    await unmountsClean(dir, pid);
  });

  it('uninstall.sh removes exactly what install.sh put in place, and a second run is fine', async () => {
    const listing = async () => ({
      bin: (await readdir(path.dirname(BIN.vircpt))).sort(), sbin: (await readdir(path.dirname(HELPER))).sort(),
    });
    const before = await listing();
    const r = await runScript('uninstall.sh');
    assert.equal(r.code, 0, r.output);
    assert.deepEqual(installedPaths(), []);
    const now = await listing();
    assert.deepEqual(now.bin, before.bin.filter((n) => n !== 'vircpt' && n !== 'vircptfs'), 'nothing else in bin');
    assert.deepEqual(now.sbin, before.sbin.filter((n) => n !== 'mount.fuse.vircptfs'), 'nothing else in sbin');
    const which = await execa('sh', ['-c', 'command -v vircptfs'], { env: { PATH: USER_PATH }, extendEnv: false, reject: false });
    assert.notEqual(String(which.stdout), BIN.vircptfs);
    const again = await runScript('uninstall.sh');
    assert.equal(again.code, 0, again.output);
    assert.match(again.output, /nothing to remove/);
  });
});
