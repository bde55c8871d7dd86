// Acting as another local user: a lab user and group made for one test file (unique names,
// removed in cleanup) and `runuser -u USER -- CMD` (util-linux) to run a command as them.
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { requireTools, run } from './tools.js';

export interface AsUserResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cmd args` as `user` (no login shell, no environment but LC_ALL=C and a plain PATH). */
export async function asUser(user: string, cmd: string, args: string[], timeoutMs = 60_000): Promise<AsUserResult> {
  await requireTools('runuser');
  const r = await execa('runuser', ['-u', user, '--', cmd, ...args], {
    reject: false, timeout: timeoutMs, stdin: 'ignore', cwd: '/', encoding: 'utf8',
    env: { LC_ALL: 'C', PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' }, extendEnv: false,
  });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** A system user in its own new group, both named for this run; `remove()` deletes both. */
export class LabUser {
  readonly name: string;
  readonly group: string;
  uid = -1;
  gid = -1;

  constructor(tag: string) {
    // useradd allows 32 characters.
    const id = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
    this.name = `vcl-${tag}-${id}`.slice(0, 32);
    this.group = `vcg-${tag}-${id}`.slice(0, 32);
  }

  async create(): Promise<this> {
    await requireTools('useradd', 'groupadd', 'userdel', 'groupdel');
    await run('groupadd', ['--system', this.group]);
    await run('useradd', ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin',
      '--gid', this.group, this.name]);
    this.uid = Number((await run('id', ['-u', this.name])).trim());
    this.gid = Number((await run('id', ['-g', this.name])).trim());
    return this;
  }

  run(cmd: string, args: string[]): Promise<AsUserResult> {
    return asUser(this.name, cmd, args);
  }

  /** Idempotent, never throws: the user first (its primary group cannot go before it). */
  async remove(): Promise<void> {
    await execa('userdel', [this.name], { reject: false });
    await execa('groupdel', [this.group], { reject: false });
  }
}
