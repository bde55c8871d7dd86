#!/usr/bin/env node
// vircptfs: the only place that reads argv, handles signals and exits.
import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { DEFAULT_DAEMON_LOG, hasSyslog, isDaemonChild, startDaemon, tellParent } from '../cli/daemon.js';
import { EXIT_FAILED, EXIT_OK } from '../cli/exit.js';
import { mountOrExit, parseOrExit, type FsDeps } from '../cli/vircptfs.js';
import { messageOf } from '../errors.js';
import type { FsOptions } from '../fs/options.js';
import { createLogger, type LogOptions } from '../log.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
const daemon = isDaemonChild();

function logOptions(o: FsOptions): LogOptions {
  const base: LogOptions = { level: o.debug ? 'debug' : 'info', prefix: 'vircptfs' };
  if (o.logFile) return { ...base, file: o.logFile };
  if (!daemon) return base;
  return hasSyslog() ? { ...base, prefix: '', syslogTag: 'vircptfs', fallbackFile: DEFAULT_DAEMON_LOG } : { ...base, file: DEFAULT_DAEMON_LOG };
}

// In the daemon, errors go to the waiting parent (it prints them), not to a closed stderr.
let lastError = '';
const deps: FsDeps = {
  version: pkg.version,
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => (daemon ? void (lastError ||= s.replace(/^vircptfs: /, '').split('\n')[0]!) : process.stderr.write(s)),
  makeLogger: (o) => createLogger(logOptions(o)),
};

const argv = process.argv.slice(2);
const parsed = parseOrExit(argv, deps);
if (typeof parsed === 'number') {
  process.exitCode = parsed;
} else if (!parsed.foreground && !daemon) {
  process.exitCode = await startDaemon(fileURLToPath(import.meta.url), argv, deps.stderr);
} else {
  const log = deps.makeLogger(parsed);
  const fs = await mountOrExit(parsed, log, deps);
  if (typeof fs === 'number') {
    if (daemon) await tellParent({ error: lastError || 'mount failed', code: fs });
    process.exit(fs);
  }
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      log.info(`${sig}: unmounting ${fs.mountpoint}`);
      void fs.stop().finally(() => process.exit(EXIT_OK));
    });
  }
  // kill -USR2: one log line of what a leak would show (a soak, or an operator, watches it).
  process.on('SIGUSR2', () => log.info(statsLine()));
  if (daemon) {
    // Ready means: the mount is live and lists.
    try {
      await readdir(fs.mountpoint);
      await tellParent({ ready: true });
    } catch (err) {
      await tellParent({ error: `the mount at ${fs.mountpoint} does not list: ${messageOf(err)}`, code: EXIT_FAILED });
      await fs.stop();
      process.exit(EXIT_FAILED);
    }
  }
  await fs.done;
  process.exit(EXIT_OK);
}

/** Memory and the event loop's live handles, requests and timers, counted by kind. */
function statsLine(): string {
  const mem = process.memoryUsage();
  const kinds = new Map<string, number>();
  const active = process.getActiveResourcesInfo();
  for (const k of active) kinds.set(k, (kinds.get(k) ?? 0) + 1);
  const mib = (n: number) => (n / 2 ** 20).toFixed(1);
  return `stats: rss=${mem.rss} (${mib(mem.rss)} MiB) heap=${mib(mem.heapUsed)}MiB external=${mib(mem.external)}MiB ` +
    `resources=${active.length} (${[...kinds].map(([k, n]) => `${k}:${n}`).join(' ')})`;
}
