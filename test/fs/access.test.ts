// Who can reach what through a mount, tried for real as other local users (runuser): `nobody`,
// and a lab user in a lab group. Without allow_other no one else gets in; with it, the modes that
// uid=/gid=/umask= give decide (the kernel checks them: default_permissions), and an open it
// refuses never reaches vircptfs, so it starts no export. Write-like calls are EROFS for anyone.
// The export's NBD socket and scratch file stay closed to non-root users, and the disk's bytes
// never reach the log. Only root mounts.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, LAB_URI, virsh, type LabVm } from '../lab/lab.js';
import { VIRCPTFS } from '../lab/cli.js';
import { freshMountpoint, mountEntry, mountFs, runFs, type FsMount } from '../lab/mount.js';
import { requireTools, run } from '../lab/tools.js';
import { asUser, LabUser, type AsUserResult } from '../lab/users.js';
import { defaultRuntimeDirs, domainDirName } from '../../src/exports/runtime.js';
import { dirtyOf, dirtyRanges, exported, MiB, reference, type DirtyMapJson } from './helpers.js';

const NOBODY = 'nobody';
/** Guest writes after the checkpoint: away from the ext4 metadata at the disk's start. */
const DIRTY: Array<[number, number]> = [[48 * MiB, MiB]];
/** Tries every write-like call on a checkpoint directory and a disk file; prints {call: result}. */
const WRITE_SCRIPT = `
import errno, json, os, sys
d, f = sys.argv[1], sys.argv[2]
def t(fn):
    try:
        fn()
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
print(json.dumps({
    'write': t(lambda: os.open(f, os.O_WRONLY)),
    'truncate': t(lambda: os.truncate(f, 0)),
    'create': t(lambda: os.open(os.path.join(d, 'new.txt'), os.O_WRONLY | os.O_CREAT, 0o644)),
    'mkdir': t(lambda: os.mkdir(os.path.join(d, 'newdir'))),
    'unlink': t(lambda: os.unlink(f)),
    'rmdir': t(lambda: os.rmdir(d)),
    'rename': t(lambda: os.rename(f, os.path.join(d, 'renamed.raw'))),
    'chmod': t(lambda: os.chmod(f, 0o666)),
    'chown': t(lambda: os.chown(f, os.getuid(), os.getgid())),
    'setxattr': t(lambda: os.setxattr(f, 'user.vircptfs', b'1')),
    'utimens': t(lambda: os.utime(f, None)),
    'link': t(lambda: os.link(f, os.path.join(d, 'link.raw'))),
    'symlink': t(lambda: os.symlink(f, os.path.join(d, 'symlink.raw'))),
}))
`;
const WRITE_CALLS = ['write', 'truncate', 'create', 'mkdir', 'unlink', 'rmdir', 'rename', 'chmod', 'chown', 'setxattr', 'utimens', 'link', 'symlink'];
/** statvfs(3) f_flag and the names: ST_RDONLY is 1. */
const STATVFS_SCRIPT = 'import os, sys; s = os.statvfs(sys.argv[1]); print(s.f_flag & os.ST_RDONLY, s.f_namemax)';

function denied(r: AsUserResult, what: string): void {
  assert.notEqual(r.code, 0, `${what} should be refused: ${r.stdout}`);
  assert.match(r.stderr, /Permission denied/, `${what}: ${r.stderr}`);
}

/** `ls -ln`-like view of every path of a checkpoint, as root: mode, owner, group, size, mtime. */
async function snapshot(m: FsMount, vm: LabVm): Promise<string> {
  return run('find', [m.path(vm.name), '-printf', '%P %M %U %G %s %T@\n']);
}

describe('access through a mount, as other users', () => {
  const lab = new Lab('access');
  const member = new LabUser('acc');
  const marker = `vircptfs-secret-${randomBytes(8).toString('hex')}`;
  let vm: LabVm;
  let tmp: string;
  let sdaSha = '';
  const mounts: FsMount[] = [];
  const mount = async (options: string[], debug = false) => {
    const m = await mountFs({ options: [`domain=${vm.name}`, 'nofreeze', ...options], debug });
    mounts.push(m);
    return m;
  };
  const files = (m: FsMount) => ({
    root: m.dir, dom: m.path(vm.name), cp: m.path(vm.name, 'c1'), disk: m.path(vm.name, 'c1', 'sda.raw'), map: m.path(vm.name, 'c1', 'dirty-map.json'),
  });

  /** list, stat, read, open of a dirty map: each refused, and no export started. */
  async function refusedEverything(m: FsMount, user: string): Promise<void> {
    const f = files(m);
    denied(await asUser(user, 'ls', [f.root]), `${user}: ls the root`);
    denied(await asUser(user, 'stat', [f.dom]), `${user}: stat a domain`);
    denied(await asUser(user, 'head', ['-c', '1', f.disk]), `${user}: read a disk`);
    denied(await asUser(user, 'cat', [f.map]), `${user}: open a dirty map`);
    assert.equal(await vm.jobType(), 'None', `${user}: the refused opens started no backup job (virsh domjobinfo)`);
    assert.equal(await exported(vm), false, `${user}: nothing exported`);
  }

  before(async () => {
    await requireTools('runuser', 'python3', 'nbdinfo', 'findmnt', 'sha256sum');
    await member.create();
    vm = await lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 64 * MiB, files: { 'secret.txt': `${marker}\n`.repeat(64) } }] });
    await virsh('checkpoint-create-as', '--', vm.name, 'c1');
    for (const [off, len] of DIRTY) await vm.write('sda', off, len, 0x5a);
    tmp = lab.dir;
    sdaSha = createHash('sha256').update(await reference(vm, 'sda', tmp)).digest('hex');
  });
  after(async () => {
    for (const m of mounts) await m.cleanup();
    await lab.cleanup();
    await member.remove();
  });

  it('without allow_other, nobody and a group member get EACCES on everything; no export starts', async () => {
    const m = await mount(['idle=2']);
    for (const user of [NOBODY, member.name]) await refusedEverything(m, user);
    // Even as the owner of every file (uid=), without allow_other the kernel lets no one else in.
    await m.cleanup();
    const owned = await mount([`uid=${member.name}`, `gid=${member.gid}`, 'idle=2']);
    assert.equal((await run('stat', ['-c', '%a %U %g', owned.path(vm.name, 'c1', 'sda.raw')])).trim(), `400 ${member.name} ${member.gid}`);
    assert.equal((await run('stat', ['-c', '%a %U %g', owned.path(vm.name)])).trim(), `500 ${member.name} ${member.gid}`);
    await refusedEverything(owned, member.name);
    await owned.cleanup();
  });

  it('allow_other alone grants nobody anything: files 0400, directories 0500, root\'s', async () => {
    const m = await mount(['allow_other', 'idle=2']);
    const f = files(m);
    assert.equal((await run('stat', ['-c', '%a %U %G', f.root, f.dom, f.cp, f.disk, f.map])).trim(),
      ['500 root root', '500 root root', '500 root root', '400 root root', '400 root root'].join('\n'));
    for (const user of [NOBODY, member.name]) await refusedEverything(m, user);
    await m.cleanup();
  });

  it('allow_other,gid=GROUP,umask=0027: a member lists, stats, reads and opens the map; nobody cannot; the opener is logged', async () => {
    const m = await mount(['allow_other', `gid=${member.group}`, 'umask=0027', 'idle=60'], true);
    const f = files(m);
    await refusedEverything(m, NOBODY);

    assert.deepEqual((await member.run('ls', [f.root])).stdout.split('\n').filter(Boolean), [vm.name]);
    assert.deepEqual((await member.run('ls', [f.cp])).stdout.split('\n').filter(Boolean), ['dirty-map.json', 'sda.raw']);
    assert.equal((await member.run('stat', ['-c', '%a %U %G', f.dom, f.disk])).stdout.trim(), `550 root ${member.group}\n440 root ${member.group}`);
    // The first open starts the export: its opener is a shell that execs into the reader (one pid).
    const first = await member.run('sh', ['-c', 'echo $$; exec head -c 4096 "$1" >/dev/null', 'sh', f.disk]);
    assert.equal(first.code, 0, first.stderr);
    const line = m.stderr.split('\n').find((l) => l.includes(`starting the export of ${vm.name} at checkpoint c1`));
    assert.ok(line, `the export start is logged:\n${m.stderr}`);
    assert.match(line, new RegExp(`for uid ${member.uid} \\(pid ${first.stdout.trim()}\\)$`), line);
    const read = await member.run('sha256sum', [f.disk]);
    assert.equal(read.stdout.split(' ')[0], sdaSha, 'the member reads the disk\'s bytes');
    const map = JSON.parse((await member.run('cat', [f.map])).stdout) as DirtyMapJson;
    assert.deepEqual(dirtyOf(map.disks.sda!.extents), dirtyRanges(DIRTY));

    // Who may read the mount still cannot reach the NBD side: the socket and the scratch file.
    await nbdSideClosed([NOBODY, member.name]);
    assert.ok(!m.stderr.includes(marker), 'the log holds none of the disk\'s bytes');
    assert.ok(m.stderr.includes('virsh'), 'the debug log was on');
    await m.cleanup();
  });

  async function nbdSideClosed(users: string[]): Promise<void> {
    const socket = /<server[^>]*\ssocket='([^']+)'/.exec(await virsh('backup-dumpxml', '--', vm.name))?.[1];
    assert.ok(socket, 'the backup job serves a Unix socket');
    const dirs = defaultRuntimeDirs();
    const instance = path.relative(dirs.runDir, socket).split(path.sep)[0]!;
    const scratchDir = path.join(dirs.scratchRoot, instance, domainDirName(vm.name));
    const scratch = (await readdir(scratchDir)).map((n) => path.join(scratchDir, n));
    assert.ok(scratch.length > 0, `a scratch file in ${scratchDir}`);
    for (const user of users) {
      const nbd = await asUser(user, 'nbdinfo', [`nbd+unix:///sda?socket=${socket}`]);
      assert.notEqual(nbd.code, 0, `${user}: nbdinfo on the export's socket should fail: ${nbd.stdout}`);
      assert.match(nbd.stderr, /Permission denied/, `${user}: ${nbd.stderr}`);
      for (const file of scratch) denied(await asUser(user, 'cat', [file]), `${user}: cat the scratch file`);
      denied(await asUser(user, 'ls', [path.dirname(socket)]), `${user}: ls the socket's folder`);
    }
    const root = await run('nbdinfo', ['--size', `nbd+unix:///sda?socket=${socket}`]);
    assert.equal(root.trim(), String(64 * MiB), 'root connects');
  }

  it('every write-like call is EROFS for root and for an allow_other user, and changes nothing; statfs says read-only', async () => {
    const m = await mount(['allow_other', `gid=${member.group}`, 'umask=0007', 'idle=2']);
    const f = files(m);
    const before = await snapshot(m, vm);
    const expected = Object.fromEntries(WRITE_CALLS.map((c) => [c, 'EROFS']));
    for (const [who, as] of [['root', undefined], ['the member', member.name]] as const) {
      for (const target of [f.disk, f.map]) {
        const r = as ? await asUser(as, 'python3', ['-c', WRITE_SCRIPT, f.cp, target]) : { stdout: await run('python3', ['-c', WRITE_SCRIPT, f.cp, target]) };
        assert.deepEqual(JSON.parse(r.stdout), expected, `${who} on ${path.basename(target)}`);
      }
      const s = as ? (await asUser(as, 'python3', ['-c', STATVFS_SCRIPT, f.root])).stdout : await run('python3', ['-c', STATVFS_SCRIPT, f.root]);
      assert.equal(s.trim(), '1 255', `${who}: statvfs f_flag has ST_RDONLY, names up to 255 bytes`);
    }
    assert.equal(await snapshot(m, vm), before, 'nothing changed');
    assert.ok((await run('findmnt', ['-n', '-o', 'OPTIONS', m.dir])).trim().split(',').includes('ro'), 'findmnt: ro');
    await m.cleanup();
  });

  it('bad uid=, gid=, umask= values are refused in one line before anything is mounted', async () => {
    const dir = await freshMountpoint('acc');
    try {
      for (const [opt, line] of [
        ['uid=vircptfs-no-such-user', /uid=vircptfs-no-such-user: no such user/],
        ['gid=vircptfs-no-such-group', /gid=vircptfs-no-such-group: no such group/],
        ['umask=0999', /umask=0999: not an octal mode/],
        ['uid=4294967295', /uid=4294967295: not a whole number/],
      ] as const) {
        const r = await runFs(['-o', opt, LAB_URI, dir]);
        assert.equal(r.code, 2, `${opt}: ${r.stderr}`);
        assert.match(r.stderr.split('\n')[0]!, line);
        assert.equal(await mountEntry(dir), undefined, `${opt}: nothing mounted`);
      }
    } finally {
      await run('rmdir', [dir]);
    }
  });

  it('a non-root vircptfs says so in one line and mounts nothing', async () => {
    const dir = await freshMountpoint('acc');
    try {
      for (const fg of [[], ['-f']]) {
        const r = await asUser(NOBODY, process.execPath, [VIRCPTFS, ...fg, '-o', 'allow_other', LAB_URI, dir]);
        assert.equal(r.code, 2, r.stderr);
        assert.equal(r.stderr.split('\n')[0], 'vircptfs: only root can mount vircptfs (exports need root)');
        assert.equal(await mountEntry(dir), undefined, 'nothing mounted');
      }
      const help = await asUser(NOBODY, process.execPath, [VIRCPTFS, '--help']);
      assert.equal(help.code, 0, 'anyone may read --help');
    } finally {
      await run('rmdir', [dir]);
    }
  });
});
