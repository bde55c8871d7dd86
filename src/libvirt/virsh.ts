// The one way this project talks to libvirt: virsh (libvirt-clients), XML in and out.
// node-libvirt does not build on Node 20 and has no checkpoint/backup calls; virsh has them all.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { VircptError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import { runProgram, stripFinalNewline } from '../run.js';
import { sayable, takePrestarted, VirshSession } from './virsh-session.js';

export interface VirshOptions {
  uri: string;
  /** Default deadline of one call (ms). */
  timeoutMs?: number;
  log?: Logger;
  /**
   * Quick read-only queries go through long-lived virsh shells (virsh-session.ts) instead of a
   * process each: for the vircptfs daemon, and for a vircpt command that asks several questions.
   */
  session?: boolean;
  /** Shells at most in session mode (default 3). */
  maxSessions?: number;
}

/** Queries that answer at once and change nothing: what the shells may run. A shell's answer is
 *  read from echoed text, so after a timeout or a lost connection nobody knows what it did:
 *  harmless for a query (it is asked again), not for a change. Changes and anything that can
 *  block for long (agent commands, fsfreeze, checkpoint creation) run as a virsh process of their
 *  own, whose exit status is their outcome; the exception is a change the caller checks itself
 *  after any failure (CallOptions.checkable: backup-begin, domjobabort). */
const SESSION_COMMANDS = new Set([
  'list', 'domstate', 'dominfo', 'dumpxml', 'domblkinfo', 'domjobinfo',
  'checkpoint-list', 'checkpoint-dumpxml', 'backup-dumpxml', 'uri',
]);

/** What a shell says (before the next answer) when its connection to libvirtd broke, or when it
 *  reconnected to a new libvirtd (its answer is then right, but every other shell is stale too). */
const LOST_CONNECTION = /Disconnected from|Failed to reconnect|Reconnected to the hypervisor|no valid connection|End of file while reading data/i;

/** Shells at most: a listing refresh and an export start's look-ups need not queue behind each other. */
const MAX_SESSIONS = 3;

export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
  input?: string;
  /**
   * A change whose outcome the caller learns afterwards by itself whenever the call fails
   * (backup-begin, domjobabort: backup-dumpxml names the job's socket): it may go through a
   * shell too, which saves starting a process (25-150 ms by load). Anything but a clean answer is
   * an error, never a second try as a process here, since the first may have done it.
   */
  checkable?: boolean;
}

// libvirt's own words -> our codes. Order matters: the first match wins.
const CLASSIFY: [RegExp, ErrorCode][] = [
  [/failed to get domain|Domain not found/i, 'DOMAIN_NOT_FOUND'],
  [/checkpoint not found|no domain checkpoint with matching name/i, 'CHECKPOINT_NOT_FOUND'],
  [/already exists/i, 'CHECKPOINT_EXISTS'],
  [/domain is not running/i, 'DOMAIN_NOT_RUNNING'],
  [/no domain backup job present|no job is active on the domain/i, 'NO_EXPORT'],
  [/cannot acquire state change lock|another job|job .* is active|operation is not valid: .*job/i, 'JOB_ACTIVE'],
  [/guest agent is not (configured|connected|responding)|QEMU guest agent/i, 'AGENT_UNAVAILABLE'],
];

export function classifyVirshError(stderr: string): ErrorCode {
  for (const [re, code] of CLASSIFY) if (re.test(stderr)) return code;
  return 'LIBVIRT';
}

/** libvirt's message without virsh's "error: " prefixes, on one line. */
export function libvirtWords(stderr: string): string {
  return stderr
    .split('\n')
    .map((l) => l.replace(/^error:\s*/, '').trim())
    .filter((l) => l.length > 0)
    .join(': ');
}

/** A failure in libvirt's words, with our code for it. */
function libvirtError(text: string, cause: unknown): VircptError {
  const words = libvirtWords(text);
  return new VircptError(classifyVirshError(words), words, { cause });
}

const timedOut = (args: string[], ms: number) => new VircptError('TIMEOUT', `virsh ${args[0]} timed out after ${ms} ms`);
const cancelled = (args: string[], signal: AbortSignal | undefined) =>
  new VircptError('ABORTED', `virsh ${args[0]} was cancelled`, { cause: signal?.reason });

export class Virsh {
  readonly uri: string;
  readonly #timeoutMs: number;
  readonly #log: Logger | undefined;
  /** Shells of session mode (none otherwise), opened as concurrent queries need them. */
  readonly #sessions: VirshSession[] | undefined;
  readonly #maxSessions: number;

  constructor(opts: VirshOptions) {
    this.uri = opts.uri;
    this.#timeoutMs = opts.timeoutMs ?? 60_000;
    this.#log = opts.log;
    this.#sessions = opts.session ? [] : undefined;
    this.#maxSessions = Math.max(1, opts.maxSessions ?? MAX_SESSIONS);
  }

  /**
   * Session mode: starts a shell now (or takes the one prestarted for this URI), so that virsh
   * loads libvirt and connects while the caller does other work (loading its modules) instead of
   * at the first query. An idle shell never keeps this process alive.
   */
  warm(): void {
    const sessions = this.#sessions;
    if (sessions === undefined || sessions.length > 0) return;
    const fresh = takePrestarted(this.uri) ?? new VirshSession(this.uri);
    sessions.push(fresh);
    fresh.start();
  }

  /** Ends the shells of session mode, if any. Idempotent. */
  close(): void {
    for (const s of this.#sessions?.splice(0) ?? []) s.close();
  }

  /** An idle shell, a new one while there are fewer than MAX_SESSIONS, else the least busy. */
  #session(sessions: VirshSession[]): VirshSession {
    const idle = sessions.find((s) => s.load === 0);
    if (idle) return idle;
    if (sessions.length < this.#maxSessions) {
      const fresh = new VirshSession(this.uri);
      sessions.push(fresh);
      return fresh;
    }
    return sessions.reduce((a, b) => (b.load < a.load ? b : a));
  }

  /**
   * Runs virsh with an XML document as a file argument: `{xml}` in args stands for its path.
   * (virsh cannot open /dev/stdin when stdin is the socket pair Node gives a child.)
   */
  async runWithXml(args: string[], xml: string, opts: CallOptions = {}): Promise<string> {
    const dir = await mkdtemp(path.join(tmpdir(), 'vircpt-xml-'));
    const file = path.join(dir, 'doc.xml');
    try {
      await writeFile(file, xml, { mode: 0o600 });
      return await this.run(args.map((a) => (a === '{xml}' ? file : a)), opts);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** The session's answer; undefined when the shell failed (the caller runs a process instead). */
  async #inSession(args: string[], timeout: number, signal: AbortSignal | undefined) {
    if (signal?.aborted) throw cancelled(args, signal);
    const session = this.#session(this.#sessions!);
    try {
      const answer = await session.run(args, timeout);
      if (answer.ok || !LOST_CONNECTION.test(answer.stderr)) return answer;
      // The shell's connection broke (libvirtd restarted or stopped): every shell was connected to
      // the same libvirtd, so all are dropped (new ones connect afresh); this query runs as a process.
      this.#log?.debug({ args, stderr: answer.stderr.trim() }, 'virsh shells lost their connection; running a process');
      this.close();
      return undefined;
    } catch (err) {
      if ((err as { timedOut?: boolean }).timedOut) throw timedOut(args, timeout);
      this.#log?.debug({ args, err: (err as Error).message }, 'virsh session failed; running a process');
      return undefined;
    }
  }

  /** Runs `virsh -c URI ARGS...`; resolves to stdout, rejects with a VircptError in libvirt's words. */
  async run(args: string[], opts: CallOptions = {}): Promise<string> {
    const timeout = opts.timeoutMs ?? this.#timeoutMs;
    const started = performance.now();
    if (this.#sessions && (SESSION_COMMANDS.has(args[0] ?? '') || opts.checkable) && opts.input === undefined && sayable(args)) {
      const answer = await this.#inSession(args, timeout, opts.signal);
      if (answer === undefined && opts.checkable) {
        throw new VircptError('LIBVIRT', `virsh ${args[0]}: the virsh shell lost its connection to libvirt; outcome unknown`);
      }
      if (answer !== undefined) {
        this.#log?.debug({ args, ms: Math.round(performance.now() - started), ok: answer.ok, session: true }, 'virsh');
        if (answer.ok) return stripFinalNewline(answer.stdout);
        throw libvirtError(answer.stderr, new Error(`virsh ${args.join(' ')} failed`));
      }
    }
    const res = await runProgram('virsh', ['-q', '-c', this.uri, ...args], {
      env: { LC_ALL: 'C' },
      timeoutMs: timeout,
      signal: opts.signal,
      input: opts.input,
    });
    this.#log?.debug({ args, ms: Math.round(performance.now() - started), exit: res.exitCode ?? res.killedBy }, 'virsh');
    if (res.exitCode === 0) return res.stdout;
    if (res.timedOut) throw timedOut(args, timeout);
    if (res.aborted) throw cancelled(args, opts.signal);
    if (res.error?.code === 'ENOENT') {
      throw new VircptError('LIBVIRT', 'virsh not found: install the Debian package libvirt-clients', { cause: res.error });
    }
    const ended = res.exitCode !== null ? `exit code ${res.exitCode}` : `killed by ${res.killedBy ?? 'an error'}`;
    throw libvirtError(res.stderr || res.error?.message || `virsh ${args[0]} failed (${ended})`,
      res.error ?? new Error(`virsh ${args.join(' ')}: ${ended}`));
  }
}
