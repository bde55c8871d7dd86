// The mountpoint before mounting: it must be a directory that nothing is mounted on. A stale
// FUSE mount left by a killed daemon ("Transport endpoint is not connected") is recovered.
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { VircptError, messageOf } from '../errors.js';
import { runProgram } from '../run.js';
import { readMountinfo } from './fuse/index.js';

export async function prepareMountpoint(mountpoint: string): Promise<{ recovered: boolean }> {
  const abs = path.resolve(mountpoint);
  let recovered = false;
  const st = await stat(abs).catch(async (err: NodeJS.ErrnoException) => {
    // ECONNABORTED: the daemon died while this request was in flight (kernel fuse_abort_conn).
    if (err.code !== 'ENOTCONN' && err.code !== 'ECONNABORTED') return undefined;
    await detachStale(abs);
    recovered = true;
    return stat(abs).catch(() => undefined);
  });
  if (!st?.isDirectory()) throw new VircptError('USAGE', `mountpoint ${mountpoint} does not exist or is not a directory`);
  const mounted = (await readMountinfo()).find((m) => m.mountpoint === abs);
  if (mounted) throw new VircptError('BUSY', `mountpoint ${mountpoint} is busy: a ${mounted.fstype} filesystem is mounted there`);
  return { recovered };
}

/** Lazily unmounts a dead FUSE mount (its daemon is gone; nothing can be served from it). */
async function detachStale(mountpoint: string): Promise<void> {
  for (const tool of ['fusermount3', 'fusermount']) {
    const r = await runProgram(tool, ['-uz', mountpoint], { timeoutMs: 15_000 });
    if (r.exitCode === 0) return;
    if (tool === 'fusermount') {
      throw new VircptError('BUSY', `mountpoint ${mountpoint} holds a dead FUSE mount that could not be removed: ${messageOf(r.stderr || r.error?.message || `exit code ${r.exitCode}`)}`);
    }
  }
}
