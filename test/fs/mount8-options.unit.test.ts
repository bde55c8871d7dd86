// mount(8)'s own options have one list, vircptfs's (src/fs/options.ts MOUNT8_OPTIONS): the mount
// helper passes every option on as it came, vircptfs ignores these, and --help and the README
// show that same list. The helper runs here as scripts/install.sh installs it (its two paths
// written in) and as mount(8) runs it (no environment), in fake mode (-f): nothing is mounted.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { FS_USAGE } from '../../src/cli/vircptfs.js';
import { MOUNT8_OPTIONS, parseFsArgs } from '../../src/fs/options.js';
import { ROOT } from '../repo/files.js';

const USERSPACE = ['x-*', 'X-*'];
/** Each of the list as mount(8) may hand it over: bare, with a value, x-/X- ones with a name. */
const handed = [...MOUNT8_OPTIONS, 'user=alice', 'comment=systemd.automount', 'x-systemd.requires=libvirtd.service', 'X-mount.mkdir'];

test('vircptfs accepts and ignores every option of mount(8)\'s list, with or without a value', () => {
  assert.ok(MOUNT8_OPTIONS.includes('_netdev') && MOUNT8_OPTIONS.includes('noauto'), 'the list is read');
  assert.deepEqual(parseFsArgs(['-o', handed.join(','), 's://', '/m']), parseFsArgs(['s://', '/m']));
  assert.throws(() => parseFsArgs(['-o', 'y-not', 's://', '/m']), /unknown option: y-not/);
});

test('the mount helper, installed, passes every option on to vircptfs as it came (it keeps no list)', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'vircptfs-helper-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const js = path.join(ROOT, 'dist/src/bin/vircptfs.js');
  // What scripts/install.sh writes in: the node that runs it, and the package's vircptfs.
  const text = (await readFile(path.join(ROOT, 'mount-helper/mount.fuse.vircptfs'), 'utf8'))
    .replace(/^VIRCPTFS_NODE=''$/m, `VIRCPTFS_NODE='${process.execPath}'`).replace(/^VIRCPTFS_JS=''$/m, `VIRCPTFS_JS='${js}'`);
  assert.ok(text.includes(`VIRCPTFS_JS='${js}'`), 'the install markers are in the helper');
  const helper = path.join(dir, 'mount.fuse.vircptfs');
  await writeFile(helper, text, { mode: 0o755 });
  const [first, second] = [handed.slice(0, 10).join(','), [...handed.slice(10), 'domain=vm1,idle=5'].join(',')];
  const r = await promisify(execFile)(helper, ['qemu:///system', '/mnt/x', '-s', '-f', '-n', '-v', '-o', first, `-o${second}`,
    '-t', 'fuse.vircptfs'], { env: {} });
  assert.equal(r.stderr, `mount.fuse.vircptfs: running: ${process.execPath} ${js} -o ${first},${second} qemu:///system /mnt/x\n`);
});

test('--help and the README show mount(8)\'s list as it is', async () => {
  const shown = [...MOUNT8_OPTIONS, ...USERSPACE].sort();
  const help = /Accepted and ignored \(mount\(8\)\/fstab\):\n((?: {4}\S.*\n)+)/.exec(FS_USAGE)?.[1];
  assert.deepEqual(help?.trim().split(/\s+/).sort(), shown, '--help');
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  const listed = /Options that `mount\(8\)` and fstab pass along \(`([^`]+)`\)/.exec(readme)?.[1];
  assert.deepEqual(listed?.split(/\s+/).sort(), shown, 'README');
});
