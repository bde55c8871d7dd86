// The filesystem's mount and its life: the mountpoint made ready (a dead mount of ours taken
// over), the files served read-only through the FUSE edge with errno mapping and a bounded error
// log, the mount recorded as this instance's, and its end, however it comes. What the files are
// made of (libvirt, exports, cache) is put together by the program (src/cli/vircptfs-start.ts).
import { readdir } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { VircptError, messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import { toErrno } from './errno.js';
import type { Files } from './files.js';
import { mountFuse, setReadAhead } from './fuse/index.js';
import { prepareMountpoint, recordMount } from './mountpoint.js';

const UNMOUNT_GRACE_MS = 5000;
/** The same error message is logged at most once in this interval. */
const ERROR_LOG_INTERVAL_MS = 10_000;
/** Errors a reader causes as a matter of course: answered, not logged. */
const QUIET_CODES = new Set(['NOT_FOUND', 'READ_ONLY', 'NO_DATA', 'NAME_TOO_LONG']);

export interface RunningFs {
  readonly mountpoint: string;
  /** Settles once the filesystem is down (stop(), or an unmount from outside) and all is released. */
  readonly done: Promise<void>;
  /** Unmounts and releases every export. Idempotent. */
  stop(): Promise<void>;
}

export interface ServeOptions {
  mountpoint: string;
  /** What mount tables show as the source (the libvirt URI). */
  fsname: string;
  allowOther: boolean;
  readaheadKb: number;
  /** Where this instance records its mount (prepareMount's runDir), and the instance's id. */
  runDir: string;
  instanceId: string;
}

/** Before anything else is started: the mountpoint free (a dead mount of ours detached) and empty. */
export async function prepareMount(mountpoint: string, runDir: string, log: Logger): Promise<void> {
  const { recovered } = await prepareMountpoint(mountpoint, runDir);
  if (recovered) log.warn(`${mountpoint} held a dead mount (its daemon was killed); detached it`);
  // A mount over files would hide them: refused (libfuse 3 allows it, libfuse 2 did not).
  if ((await readdir(mountpoint).catch(() => [])).length > 0) {
    throw new VircptError('USAGE', `mountpoint ${mountpoint} is not empty`);
  }
}

/**
 * Mounts `files` and serves them until stop() or an unmount from outside. `release` runs once,
 * after every open file was released: it ends what the files were made of (the exports).
 * When the mount fails, nothing of it is left and `release` is not run.
 */
export async function serveFiles(files: Files, o: ServeOptions, log: Logger, release: () => Promise<void>): Promise<RunningFs> {
  const logOnce = onceIn(ERROR_LOG_INTERVAL_MS, (message) => log.error(message));
  const fuse = await mountFuse(o.mountpoint, files, {
    fsname: o.fsname, subtype: 'vircptfs', readOnly: true, allowOther: o.allowOther,
    // Always: the modes getattr gives (uid=, gid=, umask=) are what the kernel checks, so an
    // open it refuses never reaches us and starts no export (docs/security.md).
    defaultPermissions: true, attrTimeout: 1, entryTimeout: 1,
    toErrno: (err) => {
      if (!(err instanceof VircptError) || !QUIET_CODES.has(err.code)) logOnce(messageOf(err));
      return toErrno(err);
    },
  });
  // Which instance serves this mount: a later start takes it over only once that one is dead.
  const forgetMount = await recordMount(o.runDir, o.instanceId, fuse.mountpoint).catch((err: unknown) => {
    log.warn(`mount not recorded under ${o.runDir}: ${messageOf(err)}`);
    return async () => {};
  });
  await setReadAhead(fuse.mountpoint, o.readaheadKb).catch((err: unknown) => log.warn(`read-ahead not set: ${messageOf(err)}`));
  log.info({ mountpoint: fuse.mountpoint, uri: o.fsname }, `mounted ${o.fsname} at ${fuse.mountpoint}`);

  let releasing: Promise<void> | undefined;
  let stopping: Promise<void> | undefined;
  const releaseAll = () => (releasing ??= (async () => {
    await files.releaseAll();
    await release();
    await forgetMount();
  })());
  const done = fuse.exited.then(async (exit) => {
    if (exit.external) log.info(`${fuse.mountpoint} was unmounted; releasing exports`);
    await releaseAll();
    log.info(`stopped: ${fuse.mountpoint}`);
  });
  // A reader still inside (a loop device, say) keeps a lazily detached mount serving: release
  // the exports at once (its reads fail with EIO), then give the loop a few seconds to end.
  const stop = () => (stopping ??= (async () => {
    // Handled at once: a failed unmount must not become an unhandled rejection while the
    // releases run (it would end the daemon halfway).
    const unmounted = fuse.unmount().then(() => done, (err: unknown) => {
      log.error(`unmounting ${fuse.mountpoint} failed: ${messageOf(err)}`);
    });
    await releaseAll();
    await Promise.race([unmounted, sleep(UNMOUNT_GRACE_MS)]);
  })());
  return { mountpoint: fuse.mountpoint, done, stop };
}

/** A reader looping on a dead export would otherwise write one line per failed read. */
function onceIn(intervalMs: number, write: (message: string) => void): (message: string) => void {
  const lastLogged = new Map<string, number>();
  return (message) => {
    const now = Date.now();
    if (now - (lastLogged.get(message) ?? 0) < intervalMs) return;
    if (lastLogged.size > 1000) lastLogged.clear();
    lastLogged.set(message, now);
    write(message);
  };
}
