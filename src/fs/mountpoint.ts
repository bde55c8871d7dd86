// The mountpoint before mounting: it must be a directory that nothing is mounted on. A dead
// vircptfs mount left by a killed daemon is recovered, and only that: a mount counts as dead
// when statfs(2) on it fails with ENOTCONN/ECONNABORTED (the kernel sends FUSE_STATFS on every
// call, so unlike stat(2), whose answer it may take from its attribute cache, statfs always
// reaches the daemon or learns that the connection is gone), and no live instance of ours
// records it as its own (<runDir>/<instance>/.mount.json, written once mounted).
import { mkdir, readdir, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { VircptError, messageOf } from '../errors.js';
import { instanceAlive, rmdirIfEmpty } from '../exports/runtime.js';
import { lazyUnmount, readMountinfo } from './fuse/index.js';

const MOUNT_FSTYPE = 'fuse.vircptfs';
/** In the instance's folder; a leading dot: no domain folder has this name (runtime.ts). */
const MOUNT_RECORD = '.mount.json';
/** A dead connection answers statfs at once; one that does not answer is not ours to take. */
const STATFS_TIMEOUT_MS = 5_000;
/** Mounts stacked on one mountpoint that one start detaches at most. */
const MAX_DETACH = 8;

interface MountRecord { mountpoint: string; pid: number }

export async function prepareMountpoint(mountpoint: string, runDir?: string): Promise<{ recovered: boolean }> {
  const abs = path.resolve(mountpoint);
  let recovered = false;
  for (let n = 0; ; n++) {
    const top = (await readMountinfo()).findLast((m) => m.mountpoint === abs);
    if (!top) break;
    const busy = new VircptError('BUSY', `mountpoint ${mountpoint} is busy: a ${top.fstype} filesystem is mounted there`);
    if (top.fstype !== MOUNT_FSTYPE || n >= MAX_DETACH) throw busy;
    // A live instance's mount is never taken over, whatever its statfs says.
    if (runDir !== undefined && (await ownedByLiveInstance(runDir, abs))) throw busy;
    if (!(await connectionDead(abs))) throw busy;
    await detachStale(abs);
    recovered = true;
  }
  const st = await stat(abs).catch(() => undefined);
  if (!st?.isDirectory()) throw new VircptError('USAGE', `mountpoint ${mountpoint} does not exist or is not a directory`);
  if (runDir !== undefined) await forgetDeadRecords(runDir);
  return { recovered };
}

/** The FUSE connection is gone (its daemon died). A mount that answers, or hangs, is not. */
async function connectionDead(abs: string): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const hangs = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), STATFS_TIMEOUT_MS); });
  // ECONNABORTED: the daemon died while this request was in flight (kernel fuse_abort_conn).
  const probe = statfs(abs).then(() => false, (err: NodeJS.ErrnoException) => err.code === 'ENOTCONN' || err.code === 'ECONNABORTED');
  try {
    return await Promise.race([probe, hangs]);
  } finally {
    clearTimeout(timer);
  }
}

/** Lazily unmounts a dead FUSE mount (its daemon is gone; nothing can be served from it). */
async function detachStale(mountpoint: string): Promise<void> {
  await lazyUnmount(mountpoint).catch((err: unknown) => {
    throw new VircptError('BUSY', `mountpoint ${mountpoint} holds a dead FUSE mount that could not be removed: ${messageOf(err)}`, { cause: err });
  });
}

async function mountRecords(runDir: string): Promise<Array<{ instance: string; file: string; rec: MountRecord }>> {
  const ids = await readdir(runDir).catch(() => [] as string[]);
  const out = await Promise.all(ids.map(async (instance) => {
    const file = path.join(runDir, instance, MOUNT_RECORD);
    const rec = await readFile(file, 'utf8').then((t) => JSON.parse(t) as MountRecord, () => undefined);
    return rec && typeof rec.mountpoint === 'string' ? [{ instance, file, rec }] : [];
  }));
  return out.flat();
}

/** Whether a live instance of ours recorded this mountpoint as its mount. */
async function ownedByLiveInstance(runDir: string, abs: string): Promise<boolean> {
  return (await mountRecords(runDir)).some((r) => r.rec.mountpoint === abs && instanceAlive(r.instance));
}

/** Removes the records of dead instances whose mount is gone (detached here, or by anyone). */
async function forgetDeadRecords(runDir: string): Promise<void> {
  const mounted = new Set((await readMountinfo()).filter((m) => m.fstype === MOUNT_FSTYPE).map((m) => m.mountpoint));
  for (const r of await mountRecords(runDir)) {
    if (mounted.has(r.rec.mountpoint) || instanceAlive(r.instance)) continue;
    await rm(r.file, { force: true });
    await rmdirIfEmpty(path.dirname(r.file));
  }
}

/** Records this instance's mount (what prepareMountpoint checks); returns its removal. */
export async function recordMount(runDir: string, instance: string, mountpoint: string): Promise<() => Promise<void>> {
  const instanceDir = path.join(runDir, instance);
  await mkdir(runDir, { recursive: true, mode: 0o755 });
  await mkdir(instanceDir, { recursive: true, mode: 0o711 });
  const file = path.join(instanceDir, MOUNT_RECORD);
  const rec: MountRecord = { mountpoint: path.resolve(mountpoint), pid: process.pid };
  await writeFile(file, `${JSON.stringify(rec)}\n`, { mode: 0o600 });
  return async () => {
    await rm(file, { force: true });
    await rmdirIfEmpty(instanceDir);
  };
}
