// The machine-wide install (scripts/install.sh: npm install -g of the packed repository, plus the
// mount(8) helper) as a test must leave it: whatever was at the
// install's paths before the test (an earlier install, or someone else's files) is set aside
// first and put back afterwards, exactly; what the test installed is removed with uninstall.sh.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const PREFIX = '/usr/local';
/** Where npm install -g puts the package; PREFIX/bin/vircpt and vircptfs are npm's links into it. */
export const LIBDIR = `${PREFIX}/lib/node_modules/vircptfs`;
export const BIN = { vircpt: `${PREFIX}/bin/vircpt`, vircptfs: `${PREFIX}/bin/vircptfs` };
/** Where mount(8) looks for `mount.fuse.vircptfs` (util-linux: /sbin, /sbin/fs.d, /sbin/fs). */
export const HELPER = '/sbin/mount.fuse.vircptfs';
export const INSTALLED_JS = `${LIBDIR}/dist/src/bin/vircptfs.js`;
const PATHS = [BIN.vircpt, BIN.vircptfs, HELPER, LIBDIR];
/** An install by the install.sh of before the npm package (a copy of the build): set aside too. */
const OLD_LIBDIR = `${PREFIX}/lib/vircptfs`;

export interface ScriptRun {
  code: number;
  output: string;
}

/**
 * Runs scripts/install.sh or uninstall.sh as a user would, from the repository, with no personal
 * npm configuration (root's ~/.npmrc may name a nodedir: the package must find Node's headers).
 */
export async function runScript(name: 'install.sh' | 'uninstall.sh'): Promise<ScriptRun> {
  const env = { npm_config_userconfig: '/dev/null', npm_config_update_notifier: 'false' };
  const r = await execa('bash', [path.join(REPO, 'scripts', name)], { env, reject: false, all: true, timeout: 600_000, stdin: 'ignore' });
  return { code: r.exitCode ?? -1, output: String(r.all) };
}

export function installedPaths(): string[] {
  return PATHS.filter((p) => existsSync(p));
}

function presentPaths(): string[] {
  return [...PATHS, OLD_LIBDIR].filter((p) => existsSync(p));
}

/** Held while a test owns the install's paths: a second run at once would set aside the first
 *  one's install and put its own in place under the first one's mounts. */
const LOCK = '/run/vircptfs-install-test.lock';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock, or fails naming the run that holds it; a dead holder's lock is taken over. */
async function lock(): Promise<void> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await mkdir(LOCK, { mode: 0o700 });
      await writeFile(path.join(LOCK, 'pid'), `${process.pid}\n`);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number((await readFile(path.join(LOCK, 'pid'), 'utf8').catch(() => '')).trim());
      if (holder > 0 && alive(holder)) {
        throw new Error(`another test (pid ${holder}) installs vircptfs machine-wide right now (${LOCK}): run this file alone`);
      }
      await rm(LOCK, { recursive: true, force: true }); // its holder died (or never wrote its pid)
    }
  }
  throw new Error(`${LOCK}: could not take the lock`);
}

/** What was at the install's paths before the test. */
export class InstallState {
  private constructor(readonly saved: string | undefined, readonly present: string[]) {}

  /** Takes the install lock, then moves anything at the install's paths to a private folder
   *  (copied, then removed). restore() gives both back. */
  static async setAside(): Promise<InstallState> {
    await lock();
    const present = presentPaths();
    if (present.length === 0) return new InstallState(undefined, []);
    const saved = `/var/tmp/vircptfs-mt-install-${process.pid}-${randomBytes(3).toString('hex')}`;
    await mkdir(saved, { mode: 0o700 });
    for (const [i, p] of present.entries()) {
      await execa('cp', ['-a', p, path.join(saved, String(i))]);
      await rm(p, { recursive: true, force: true });
    }
    return new InstallState(saved, present);
  }

  /** Removes what the test installed (uninstall.sh) and puts back what was there. */
  async restore(): Promise<void> {
    if (installedPaths().length > 0) await runScript('uninstall.sh');
    for (const p of installedPaths()) await rm(p, { recursive: true, force: true });
    if (this.saved) {
      for (const [i, p] of this.present.entries()) await execa('cp', ['-a', path.join(this.saved, String(i)), p]);
      await rm(this.saved, { recursive: true, force: true });
    }
    await rm(LOCK, { recursive: true, force: true });
  }
}
