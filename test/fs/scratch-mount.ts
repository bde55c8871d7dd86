// Mounting a filesystem of the test's own through src/fs/fuse/ on a fresh directory under /tmp,
// unmounted and removed after the test whatever happens.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { constants } from 'node:os';
import type { TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { isVircptError, VircptError } from '../../src/errors.js';
import { lazyUnmount, mountFuse, readMountinfo, type FuseMount, type FuseMountOptions, type FuseOperations, type FuseStat } from '../../src/fs/fuse/index.js';

export const execFileP = promisify(execFile);
export const MIB = 2 ** 20;
export const DIR: FuseStat = { mode: 0o40555, size: 0, mtime: 0, nlink: 2 };
export const file = (size: number, extra: Partial<FuseStat> = {}): FuseStat => ({ mode: 0o100444, size, mtime: 0, ...extra });
export const notFound = (path: string) => new VircptError('NOT_FOUND', `no ${path}`);
/** NOT_FOUND -> ENOENT; anything else is left to the default, EIO. */
export const toErrno = (err: unknown) => (isVircptError(err, 'NOT_FOUND') ? constants.errno.ENOENT : 0);

export async function requireFuseTools(...more: Array<[tool: string, pkg: string]>): Promise<void> {
  const tools: Array<[string, string]> = [['fusermount3', 'fuse3'], ['dd', 'coreutils'], ['md5sum', 'coreutils'],
    ['stat', 'coreutils'], ['unshare', 'util-linux'], ...more];
  for (const [tool, pkg] of tools) {
    await execFileP('sh', ['-c', 'command -v "$1"', 'sh', tool]).catch(() => assert.fail(`${tool} is missing: install the Debian package ${pkg}`));
  }
  await access('/dev/fuse').catch(() => assert.fail('/dev/fuse is missing (Debian package fuse3, kernel module fuse)'));
}

/** libuv handles of this process (the addon's poll handle among them). */
export function countLibuvHandles(): number {
  return (process.report.getReport() as unknown as { libuv: unknown[] }).libuv.length;
}

export const isMounted = async (dir: string) => (await readMountinfo()).some((m) => m.mountpoint === dir);

/** A fresh directory under /tmp with ops mounted on it; unmounted and removed after the test. */
export async function scratchMount(t: TestContext, ops: FuseOperations, options: FuseMountOptions = {}): Promise<FuseMount> {
  await requireFuseTools();
  const dir = await mkdtemp(`/tmp/vircpt-binding-${process.pid}-`);
  let mount: FuseMount | undefined;
  t.after(async () => {
    if (mount) await Promise.race([mount.unmount().catch(() => {}), sleep(5000)]);
    if (await isMounted(dir)) await lazyUnmount(dir).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });
  mount = await mountFuse(dir, ops, { toErrno, ...options });
  return mount;
}
