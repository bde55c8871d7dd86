// Assembles the filesystem: libvirt reachable, leftovers of crashed instances cleaned, the tree,
// the export manager and the block cache, mounted read-only through the FUSE binding.
import { readdir } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockCache, DEFAULT_REORDER_SLACK } from '../cache/index.js';
import { VircptError, messageOf } from '../errors.js';
import { cleanupStale } from '../exports/discover.js';
import { ExportManager } from '../exports/manager.js';
import { HELPER_GIVE_UP_MS, leftBy, spawnReleaseHelper } from '../exports/release-helper.js';
import { Instance, type RuntimeDirs } from '../exports/runtime.js';
import { Virsh } from '../libvirt/virsh.js';
import type { Logger, LogOptions } from '../log.js';
import { DEFAULT_DAEMON_LOG, hasSyslog } from '../cli/daemon.js';
import { Catalog } from './catalog.js';
import { toErrno } from './errno.js';
import { Files } from './files.js';
import { mountFuse, setReadAhead, type FuseMount } from './fuse/index.js';
import { prepareMountpoint, recordMount } from './mountpoint.js';
import type { FsOptions } from './options.js';

const UNMOUNT_GRACE_MS = 5000;
/** At unmount, exports not released by then (libvirt down or hanging) go to the release helper. */
const RELEASE_BOUND_MS = 20_000;
/** The same error message is logged at most once in this interval. */
const ERROR_LOG_INTERVAL_MS = 10_000;

export interface RunningFs {
  readonly mountpoint: string;
  /** Settles once the filesystem is down (stop(), or an unmount from outside) and all is released. */
  readonly done: Promise<void>;
  /** Unmounts and releases every export. Idempotent. */
  stop(): Promise<void>;
}

export async function startFilesystem(o: FsOptions & { uri: string }, dirs: RuntimeDirs, log: Logger): Promise<RunningFs> {
  const { recovered } = await prepareMountpoint(o.mountpoint, dirs.runDir);
  if (recovered) log.warn(`${o.mountpoint} held a dead mount (its daemon was killed); detached it`);
  // A mount over files would hide them: refused (libfuse 3 allows it, libfuse 2 did not).
  if ((await readdir(o.mountpoint).catch(() => [])).length > 0) {
    throw new VircptError('USAGE', `mountpoint ${o.mountpoint} is not empty`);
  }
  // One virsh shell for the many quick look-ups a mount makes (listings, export starts).
  const virsh = new Virsh({ uri: o.uri, log: log.child({ c: 'virsh' }), session: true });
  await virsh.run(['uri'], { timeoutMs: 15_000 }).catch((err: unknown) => {
    virsh.close();
    throw new VircptError('LIBVIRT', `cannot reach libvirt at ${o.uri}: ${messageOf(err)}`, { cause: err });
  });
  const cleaned = await cleanupStale(virsh, dirs, log);
  if (cleaned > 0) log.info(`released ${cleaned} export(s) left by crashed instances`);

  const instance = Instance.of('fs', dirs);
  const manager = new ExportManager({
    virsh, instance, log: log.child({ c: 'exports' }), idleMs: o.idleSeconds * 1000, scratchRoot: o.scratch,
    scratchReserve: o.scratchReserve, freeze: o.freeze, remote: o.remote, scratchBudget: o.scratchBudget,
  });
  // The kernel's read-ahead requests reach us out of order by up to about three times its
  // window (reader.ts); a larger readahead= needs a larger slack to stay one stream.
  const reorderSlack = Math.max(DEFAULT_REORDER_SLACK, 4 * o.readaheadKb * 1024);
  const cache = new BlockCache({ maxBytes: o.cacheBytes, readahead: { reorderSlack } });
  const files = new Files({
    catalog: new Catalog(virsh, { domains: o.domains, log }), manager, cache, log,
    uid: o.uid ?? process.getuid?.() ?? 0, gid: o.gid ?? process.getgid?.() ?? 0, umask: o.umask, pageCache: o.pageCache, mountedAt: new Date(),
  });
  // A reader looping on a dead export would otherwise write one line per failed read.
  const lastLogged = new Map<string, number>();
  const logOnce = (message: string) => {
    const now = Date.now();
    if (now - (lastLogged.get(message) ?? 0) < ERROR_LOG_INTERVAL_MS) return;
    if (lastLogged.size > 1000) lastLogged.clear();
    lastLogged.set(message, now);
    log.error(message);
  };
  let fuse: FuseMount;
  try {
    fuse = await mountFuse(o.mountpoint, files, {
      fsname: o.uri, subtype: 'vircptfs', readOnly: true, allowOther: o.allowOther,
      // Always: the modes getattr gives (uid=, gid=, umask=) are what the kernel checks, so an
      // open it refuses never reaches us and starts no export (docs/security.md).
      defaultPermissions: true, attrTimeout: 1, entryTimeout: 1,
      toErrno: (err) => {
        if (!(err instanceof VircptError) || !['NOT_FOUND', 'READ_ONLY', 'NO_DATA', 'NAME_TOO_LONG'].includes(err.code)) logOnce(messageOf(err));
        return toErrno(err);
      },
    });
  } catch (err) {
    await manager.close();
    virsh.close();
    throw err;
  }
  // Which instance serves this mount: a later start takes it over only once that one is dead.
  const forgetMount = await recordMount(dirs.runDir, instance.id, fuse.mountpoint).catch((err: unknown) => {
    log.warn(`mount not recorded under ${dirs.runDir}: ${messageOf(err)}`);
    return async () => {};
  });
  await setReadAhead(fuse.mountpoint, o.readaheadKb).catch((err: unknown) => log.warn(`read-ahead not set: ${messageOf(err)}`));
  log.info({ mountpoint: fuse.mountpoint, uri: o.uri }, `mounted ${o.uri} at ${fuse.mountpoint}`);

  let releasing: Promise<void> | undefined;
  let stopping: Promise<void> | undefined;
  const release = () => (releasing ??= (async () => {
    await files.releaseAll();
    await Promise.race([manager.close(), sleep(RELEASE_BOUND_MS, undefined, { ref: false })]);
    cache.clear();
    virsh.close();
    await forgetMount();
    await handOver(o, dirs, instance.id, log);
  })());
  const done = fuse.exited.then(async (exit) => {
    if (exit.external) log.info(`${fuse.mountpoint} was unmounted; releasing exports`);
    await release();
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
    await release();
    await Promise.race([unmounted, sleep(UNMOUNT_GRACE_MS)]);
  })());
  return { mountpoint: fuse.mountpoint, done, stop };
}

/** Where a detached process logs: the mount's log file, else syslog, else the daemon's file. */
function detachedLog(o: FsOptions): LogOptions {
  if (o.logFile) return { prefix: 'vircptfs', file: o.logFile };
  return hasSyslog() ? { syslogTag: 'vircptfs', fallbackFile: DEFAULT_DAEMON_LOG } : { prefix: 'vircptfs', file: DEFAULT_DAEMON_LOG };
}

/** Exports this instance could not release (their records remain) go to a detached helper. */
async function handOver(o: FsOptions & { uri: string }, dirs: RuntimeDirs, owner: string, log: Logger): Promise<void> {
  const left = (await leftBy(dirs, owner)).map((f) => f.rec.domain);
  if (left.length === 0) return;
  const pid = spawnReleaseHelper({ uri: o.uri, owner, dirs, giveUpAt: Date.now() + HELPER_GIVE_UP_MS, log: detachedLog(o) });
  if (pid === undefined) {
    log.error(`could not release ${left.join(', ')}, nor start a helper: the next vircptfs or vircpt run on this host ends them`);
    return;
  }
  log.error(`could not release ${left.join(', ')} now; a helper (pid ${pid}) releases them once libvirt answers again ` +
    `(for up to ${HELPER_GIVE_UP_MS / 60_000} minutes)`);
}
