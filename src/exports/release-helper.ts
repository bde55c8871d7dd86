// When an instance exits with exports it could not release (libvirt was down or did not answer),
// it leaves this helper: a detached process that waits for the instance to be gone, then for
// libvirt to answer, releases what the instance's records name, and gives up after a bounded
// time (whatever is still left then is ended by the next vircptfs or vircpt run on the host,
// as after a crash: discover.ts cleanupStale, backup-export.ts assertNoJob). So no job of ours
// outlives its owner unwatched, and the owner still exits within seconds.
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { messageOf } from '../errors.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger, LogOptions } from '../log.js';
import { findExports, stopExport, type FoundExport } from './discover.js';
import { instanceAlive, type RuntimeDirs } from './runtime.js';

/** How long the helper keeps trying once started. */
export const HELPER_GIVE_UP_MS = 10 * 60_000;
const RETRY_MS = 1000;
const LIBVIRT_PROBE_MS = 5000;

export interface HelperArgs {
  uri: string;
  /** The instance whose exports are left (it must have exited before the helper acts). */
  owner: string;
  dirs: RuntimeDirs;
  /** Epoch ms after which the helper gives up. */
  giveUpAt: number;
  log: LogOptions;
}

/** The instance's export records still on disk. */
export async function leftBy(dirs: RuntimeDirs, owner: string): Promise<FoundExport[]> {
  return (await findExports(dirs)).filter((f) => f.instance.id === owner);
}

/** Starts the helper, detached (it outlives this process). Returns its pid. */
export function spawnReleaseHelper(args: HelperArgs): number | undefined {
  const script = fileURLToPath(new URL('../bin/release-helper.js', import.meta.url));
  const child = spawn(process.execPath, [script, JSON.stringify(args)], { detached: true, stdio: 'ignore', cwd: '/' });
  child.on('error', () => undefined); // pid undefined: the caller says it could not start one
  child.unref();
  return child.pid;
}

/** Whether libvirt answers a call now. */
async function answers(virsh: Virsh): Promise<boolean> {
  return virsh.run(['uri'], { timeoutMs: LIBVIRT_PROBE_MS }).then(() => true, () => false);
}

/**
 * The helper's work: waits until `owner` has exited, then releases its exports as soon as libvirt
 * answers. Resolves to true once nothing of the owner's is left, false when it gave up.
 */
export async function releaseWhenBack(a: Pick<HelperArgs, 'owner' | 'dirs' | 'giveUpAt'>, virsh: Virsh, log: Logger): Promise<boolean> {
  while (instanceAlive(a.owner) && Date.now() < a.giveUpAt) await sleep(100);
  let waiting = false;
  while (Date.now() < a.giveUpAt) {
    const left = await leftBy(a.dirs, a.owner);
    if (left.length === 0) return true;
    if (await answers(virsh)) {
      for (const f of left) {
        try {
          await stopExport(virsh, f, log);
          log.info({ domain: f.rec.domain }, `released the export of ${f.rec.domain} left by exited instance ${a.owner}`);
        } catch (err) {
          log.warn({ domain: f.rec.domain }, `releasing the export of ${f.rec.domain} (instance ${a.owner}) failed: ${messageOf(err)}; trying again`);
        }
      }
      waiting = false;
    } else if (!waiting) {
      log.info(`waiting for libvirt to release ${left.map((f) => f.rec.domain).join(', ')} (instance ${a.owner})`);
      waiting = true;
    }
    await sleep(RETRY_MS);
  }
  const left = await leftBy(a.dirs, a.owner);
  if (left.length === 0) return true;
  log.error(`gave up releasing ${left.map((f) => f.rec.domain).join(', ')} (instance ${a.owner}); ` +
    'the next vircptfs or vircpt run on this host ends them');
  return false;
}
