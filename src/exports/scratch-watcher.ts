// The scratch guard of an export that outlives its command (`vircpt export`): a small detached
// process (bin/scratch-watcher.ts) started with the export, recorded in its export.json (pid and
// kernel start time, so only that very process is ever signalled) and ended by `vircpt release`.
// It gives up only the job it guards: the record must still be the one it was started for (same
// startedAt) and the job's socket the recorded one; it exits when that job is gone.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { VircptError, messageOf } from '../errors.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { Logger } from '../log.js';
import { abortOurJob } from './backup-export.js';
import { readRecord, writeRecord, type ExportRecord } from './export.js';
import { processStartTime } from './runtime.js';
import { checkScratch, describeLow, GUARD_POLL_MS, type ScratchReserve } from './scratch-guard.js';

export interface WatcherSpec {
  uri: string;
  domain: string;
  /** The export's folder under runDir (its export.json). */
  domainDir: string;
  /** The folder of its scratch images. */
  scratchDir: string;
  /** The record it guards: a later export of the domain writes another. */
  startedAt: string;
  reserve: ScratchReserve;
  intervalMs?: number;
}

export type WatcherMessage = { ready: true } | { error: string };

const WATCHER_JS = fileURLToPath(new URL('../bin/scratch-watcher.js', import.meta.url));
const READY_TIMEOUT_MS = 15_000;
const EXIT_TIMEOUT_MS = 5000;

/** Starts the watcher and resolves once it has recorded itself in the export's record. */
export function startWatcher(spec: WatcherSpec): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WATCHER_JS, JSON.stringify(spec)], {
      detached: true, stdio: ['ignore', 'ignore', 'ignore', 'ipc'], cwd: '/',
    });
    let settled = false;
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        child.kill('SIGTERM');
        return reject(err);
      }
      child.disconnect();
      child.unref();
      resolve();
    };
    const failed = (why: string) => new VircptError('IO', `domain ${spec.domain}: the scratch guard did not start: ${why}`);
    const timer = setTimeout(() => finish(failed(`no word within ${READY_TIMEOUT_MS / 1000} s`)), READY_TIMEOUT_MS);
    child.on('message', (m: WatcherMessage) => finish('ready' in m ? undefined : failed(m.error)));
    child.on('error', (err) => finish(failed(err.message)));
    child.on('exit', (code, signal) => finish(failed(`it exited (${signal ?? `code ${code}`})`)));
  });
}

/** Ends the record's watcher, if that very process still runs (pid and start time), and waits for it. */
export async function endWatcher(rec: ExportRecord): Promise<void> {
  const g = rec.guard;
  if (!g || processStartTime(g.pid) !== g.startTime) return;
  try {
    process.kill(g.pid, 'SIGTERM');
  } catch {
    return; // gone meanwhile
  }
  const deadline = Date.now() + EXIT_TIMEOUT_MS;
  while (processStartTime(g.pid) === g.startTime) {
    if (Date.now() > deadline) throw new VircptError('TIMEOUT', `the scratch guard of ${rec.domain} (pid ${g.pid}) did not exit`);
    await sleep(20);
  }
}

/** In the watcher: records itself, then polls until the job is gone or space runs low. */
export async function runWatcher(spec: WatcherSpec, virsh: Virsh, log: Logger, ready: () => Promise<void>): Promise<void> {
  const rec = await readRecord(spec.domainDir);
  if (!rec || rec.startedAt !== spec.startedAt) throw new Error(`no export of ${spec.domain} started at ${spec.startedAt}`);
  const startTime = processStartTime(process.pid);
  if (startTime === undefined) throw new Error('cannot read its own start time');
  await writeRecord(spec.domainDir, { ...rec, guard: { pid: process.pid, startTime } });
  await ready();
  for (;;) {
    await sleep(spec.intervalMs ?? GUARD_POLL_MS);
    const now = await readRecord(spec.domainDir);
    if (!now || now.startedAt !== spec.startedAt) return; // released, or another export took its place
    const v = await checkScratch({ virsh, domain: spec.domain, dir: spec.scratchDir, reserve: spec.reserve, watchJob: true })
      .catch((err: unknown) => {
        log.warn({ domain: spec.domain }, `scratch guard of ${spec.domain}: ${messageOf(err)}`);
        return { kind: 'ok' } as const;
      });
    if (v.kind === 'gone') return;
    if (v.kind === 'low') {
      const why = describeLow(v.report);
      log.error({ domain: spec.domain }, why);
      await abortOurJob(virsh, now); // only if the job's socket is still the recorded one
      await writeRecord(spec.domainDir, { ...now, gaveUp: `${new Date().toISOString()}: ${why}` }).catch(() => undefined);
      return;
    }
  }
}
