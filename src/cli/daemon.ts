// Daemon mode: the command returns 0 only once the mount is live and lists, or non-zero with the
// daemon's own error, leaving nothing mounted. The daemon runs in its own session with its
// standard streams closed; it tells the waiting parent how it went over an IPC channel.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { EXIT_FAILED } from './exit.js';

export const DAEMON_ENV = 'VIRCPTFS_DAEMON';
const READY_TIMEOUT_MS = 120_000;

export type DaemonMessage = { ready: true } | { error: string; code: number };

export function isDaemonChild(env = process.env): boolean {
  return env[DAEMON_ENV] === '1' && typeof process.send === 'function';
}

/** In the daemon: report the outcome to the parent and drop the channel. */
export function tellParent(msg: DaemonMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send) return resolve();
    process.send(msg, () => {
      process.disconnect?.();
      resolve();
    });
  });
}

/** In the parent: start the daemon (same script, same arguments) and wait for its word. */
export function startDaemon(script: string, argv: string[], stderr: (s: string) => void): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...argv], {
      detached: true, // its own session: no controlling terminal, survives the shell
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
      env: { ...process.env, [DAEMON_ENV]: '1' },
      cwd: '/',
    });
    let settled = false;
    const finish = (code: number, message?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (message) stderr(`vircptfs: ${message}\n`);
      if (code === 0) {
        child.disconnect();
        child.unref();
      }
      resolve(code);
    };
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      finish(EXIT_FAILED, `the daemon did not come up within ${READY_TIMEOUT_MS / 1000} s`);
    }, READY_TIMEOUT_MS);
    child.on('message', (m: DaemonMessage) => ('ready' in m ? finish(0) : finish(m.code, m.error)));
    child.on('error', (err) => finish(EXIT_FAILED, `cannot start the daemon: ${err.message}`));
    child.on('exit', (code) => finish(code || EXIT_FAILED, 'the daemon exited before the mount was up'));
  });
}

/** Where a daemon logs without -o log=FILE: syslog when there is one, else this file. */
export const DEFAULT_DAEMON_LOG = '/var/log/vircptfs.log';

export function hasSyslog(): boolean {
  return existsSync('/dev/log');
}
