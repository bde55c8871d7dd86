// Stopping and restarting the host's libvirtd, as a package upgrade does, for the tests that
// need it (test/serial/ only: every other test on the machine loses its libvirt connections).
// libvirtd is started again with the command line, environment and working directory it was
// started with (read from /proc/PID), and counts as back once `virsh version` answers. The
// running QEMU processes survive a restart; libvirt reattaches to them.
import { spawn } from 'node:child_process';
import { readFile, readlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { processStartTime } from '../../src/exports/runtime.js';
import { LAB_URI } from './lab.js';

const PID_FILE = '/run/libvirtd.pid';
const WAIT_MS = 30_000;

/** How the running libvirtd was started: what startLibvirtd needs to start it the same way. */
export interface LibvirtdCommand {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
}

/** The running libvirtd's pid (its pid file, checked against /proc), or undefined. */
export async function libvirtdPid(): Promise<number | undefined> {
  const pid = Number((await readFile(PID_FILE, 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 0 || processStartTime(pid) === undefined) return undefined;
  const comm = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
  return comm === 'libvirtd' ? pid : undefined;
}

async function commandOf(pid: number): Promise<LibvirtdCommand> {
  const split = (s: string) => s.split('\0').filter((x) => x.length > 0);
  const argv = split(await readFile(`/proc/${pid}/cmdline`, 'utf8'));
  const env = Object.fromEntries(split(await readFile(`/proc/${pid}/environ`, 'utf8')).map((kv) => {
    const at = kv.indexOf('=');
    return [kv.slice(0, at), kv.slice(at + 1)];
  }));
  return { argv, env, cwd: await readlink(`/proc/${pid}/cwd`).catch(() => '/') };
}

/** Whether libvirtd answers a new connection. */
export async function libvirtAnswers(): Promise<boolean> {
  const r = await execa('virsh', ['-q', '-c', LAB_URI, 'version'], { reject: false, timeout: 10_000 });
  return r.exitCode === 0;
}

async function waitFor(what: string, cond: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`libvirtd: ${what} within ${WAIT_MS / 1000} s`);
    await sleep(100);
  }
}

/**
 * Stops libvirtd (SIGTERM, as its service does) and waits until the process is gone. Returns how
 * to start it again.
 */
export async function stopLibvirtd(): Promise<LibvirtdCommand> {
  const pid = await libvirtdPid();
  if (pid === undefined) throw new Error(`libvirtd is not running (no live pid in ${PID_FILE})`);
  const cmd = await commandOf(pid);
  process.kill(pid, 'SIGTERM');
  await waitFor(`pid ${pid} did not exit`, async () => processStartTime(pid) === undefined);
  return cmd;
}

/** Starts libvirtd as `cmd` says (detached: it outlives the test) and waits until it answers. */
export async function startLibvirtd(cmd: LibvirtdCommand): Promise<void> {
  if (await libvirtdPid()) throw new Error('libvirtd is already running');
  const [file, ...args] = cmd.argv;
  if (!file) throw new Error('libvirtd: empty command line');
  const child = spawn(file, args, { env: cmd.env, cwd: cmd.cwd, detached: true, stdio: 'ignore' });
  child.unref();
  await waitFor('did not answer `virsh version`', libvirtAnswers);
}

/** Stops and starts libvirtd with its own flags; resolves once it answers again. */
export async function restartLibvirtd(): Promise<void> {
  await startLibvirtd(await stopLibvirtd());
}

/**
 * For a test that stops libvirtd: remembers how it runs now, and `ensureRunning()` (call it from
 * t.after / finally) starts it again if it is down, so a test failing midway leaves it running.
 */
export class LibvirtdGuard {
  #cmd: LibvirtdCommand | undefined;

  /** Stops libvirtd, remembering its command line. */
  async stop(): Promise<void> {
    this.#cmd = await stopLibvirtd();
  }

  async start(): Promise<void> {
    if (!this.#cmd) throw new Error('LibvirtdGuard.start before stop');
    await startLibvirtd(this.#cmd);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Starts libvirtd again (with the remembered flags) if it is not running. Never throws. */
  async ensureRunning(): Promise<void> {
    if (!this.#cmd || (await libvirtdPid()) !== undefined) return;
    await startLibvirtd(this.#cmd).catch((err: unknown) => console.error(`# could not start libvirtd again: ${String(err)}`));
  }
}
