// The machine-wide install (scripts/install.sh) as a test must leave it: whatever was at the
// install's paths before the test (an earlier install, or someone else's files) is set aside
// first and put back afterwards, exactly; what the test installed is removed with uninstall.sh.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const PREFIX = '/usr/local';
export const LIBDIR = `${PREFIX}/lib/vircptfs`;
export const BIN = { vircpt: `${PREFIX}/bin/vircpt`, vircptfs: `${PREFIX}/bin/vircptfs` };
/** Where mount(8) looks for `mount.fuse.vircptfs` (util-linux: /sbin, /sbin/fs.d, /sbin/fs). */
export const HELPER = '/sbin/mount.fuse.vircptfs';
export const INSTALLED_JS = `${LIBDIR}/dist/src/bin/vircptfs.js`;
const PATHS = [BIN.vircpt, BIN.vircptfs, HELPER, LIBDIR];

export interface ScriptRun {
  code: number;
  output: string;
}

/** Runs scripts/install.sh or uninstall.sh as a user would, from the repository. */
export async function runScript(name: 'install.sh' | 'uninstall.sh'): Promise<ScriptRun> {
  const r = await execa('bash', [path.join(REPO, 'scripts', name)], { reject: false, all: true, timeout: 300_000, stdin: 'ignore' });
  return { code: r.exitCode ?? -1, output: String(r.all) };
}

export function installedPaths(): string[] {
  return PATHS.filter((p) => existsSync(p));
}

/** What was at the install's paths before the test. */
export class InstallState {
  private constructor(readonly saved: string | undefined, readonly present: string[]) {}

  /** Moves anything at the install's paths to a private folder (copied, then removed). */
  static async setAside(): Promise<InstallState> {
    const present = installedPaths();
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
    if (!this.saved) return;
    for (const [i, p] of this.present.entries()) await execa('cp', ['-a', path.join(this.saved, String(i)), p]);
    await rm(this.saved, { recursive: true, force: true });
  }
}
