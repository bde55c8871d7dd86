// The vircptfs program put together from its parts: libvirt reachable, leftovers of crashed
// instances cleaned, the export manager (with its scratch guard), the block cache, the catalog
// and the files, served at the mountpoint by src/fs/mount.ts; at the end, exports that could not
// be released are handed to a detached helper.
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockCache, DEFAULT_REORDER_SLACK } from '../cache/index.js';
import { VircptError, messageOf } from '../errors.js';
import { cleanupStale } from '../exports/discover.js';
import { ExportManager } from '../exports/manager.js';
import { HELPER_GIVE_UP_MS, leftBy, spawnReleaseHelper } from '../exports/release-helper.js';
import { Instance, type RuntimeDirs } from '../exports/runtime.js';
import { Catalog } from '../fs/catalog.js';
import { Files } from '../fs/files.js';
import { prepareMount, serveFiles, type RunningFs } from '../fs/mount.js';
import type { FsOptions } from '../fs/options.js';
import { Virsh } from '../libvirt/virsh.js';
import type { Logger, LogOptions } from '../log.js';
import { DEFAULT_DAEMON_LOG, hasSyslog } from './daemon.js';

/** At unmount, exports not released by then (libvirt down or hanging) go to the release helper. */
const RELEASE_BOUND_MS = 20_000;

export async function startFilesystem(o: FsOptions & { uri: string }, dirs: RuntimeDirs, log: Logger): Promise<RunningFs> {
  await prepareMount(o.mountpoint, dirs.runDir, log);
  const virsh = await reachLibvirt(o.uri, log);
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
  const release = async () => {
    await Promise.race([manager.close(), sleep(RELEASE_BOUND_MS, undefined, { ref: false })]);
    cache.clear();
    virsh.close();
    await handOver(o, dirs, instance.id, log);
  };
  try {
    return await serveFiles(files, {
      mountpoint: o.mountpoint, fsname: o.uri, allowOther: o.allowOther, readaheadKb: o.readaheadKb,
      runDir: dirs.runDir, instanceId: instance.id,
    }, log, release);
  } catch (err) {
    await manager.close();
    virsh.close();
    throw err;
  }
}

/** One virsh shell for the many quick look-ups a mount makes (listings, export starts). */
async function reachLibvirt(uri: string, log: Logger): Promise<Virsh> {
  const virsh = new Virsh({ uri, log: log.child({ c: 'virsh' }), session: true });
  await virsh.run(['uri'], { timeoutMs: 15_000 }).catch((err: unknown) => {
    virsh.close();
    throw new VircptError('LIBVIRT', `cannot reach libvirt at ${uri}: ${messageOf(err)}`, { cause: err });
  });
  return virsh;
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
