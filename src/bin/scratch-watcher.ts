#!/usr/bin/env node
// The scratch guard of a `vircpt export` (exports/scratch-watcher.ts), as a process of its own:
// started detached by the export with its spec as the one argument, ended by `vircpt release`.
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { DEFAULT_DAEMON_LOG, hasSyslog } from '../cli/daemon.js';
import { messageOf } from '../errors.js';
import { runWatcher, type WatcherMessage, type WatcherSpec } from '../exports/scratch-watcher.js';
import { Virsh } from '../libvirt/virsh.js';
import { createLogger, type LogOptions } from '../log.js';

/** Syslog when there is one (the journal: journalctl -t vircpt), else the daemons' log file. */
function logOptions(spec: WatcherSpec): LogOptions {
  if (hasSyslog()) return { syslogTag: 'vircpt' };
  try {
    accessSync(path.dirname(DEFAULT_DAEMON_LOG), constants.W_OK);
    return { file: DEFAULT_DAEMON_LOG, prefix: 'vircpt' };
  } catch {
    return { file: path.join(path.dirname(path.dirname(spec.domainDir)), 'scratch-guard.log'), prefix: 'vircpt' };
  }
}

const tell = (m: WatcherMessage) => new Promise<void>((resolve) => {
  if (!process.send) return resolve();
  process.send(m, () => {
    process.disconnect?.();
    resolve();
  });
});

const spec = JSON.parse(process.argv[2] ?? '{}') as WatcherSpec;
const log = createLogger(logOptions(spec));
const virsh = new Virsh({ uri: spec.uri, log, session: true });
let told = false;
try {
  await runWatcher(spec, virsh, log, () => { told = true; return tell({ ready: true }); });
} catch (err) {
  if (!told) await tell({ error: messageOf(err) });
  else log.error({ domain: spec.domain }, `scratch guard of ${spec.domain} failed: ${messageOf(err)}`);
  process.exitCode = 1;
} finally {
  virsh.close();
}
process.exit(); // nothing of the session or the logger may keep a finished watcher alive
