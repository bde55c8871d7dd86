// One long-lived `virsh` shell for the quick read-only queries of a long-running process (the
// vircptfs daemon): each query is then a libvirt RPC of a few milliseconds instead of a new
// process that loads libvirt and connects (tens of milliseconds idle, hundreds under load).
//
// virsh reads commands from its standard input. Each command is followed by two markers:
//   <command>\necho --err M\necho M\n
// stdout then holds, per command: "virsh # <command>\n", its output, "virsh # echo --err M\n",
// "virsh # echo M\n" and "M" (virsh echoes each line it reads after its prompt when standard
// input is not a terminal); stderr holds its error lines, if any, then "error: M\n". The command
// failed when anything came before the marker on stderr. Commands run one at a time, in order.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export interface SessionResult {
  stdout: string;
  stderr: string;
  ok: boolean;
}

interface Pending {
  line: string;
  marker: string;
  timeoutMs: number;
  resolve: (r: SessionResult) => void;
  reject: (err: Error) => void;
}

const PROMPT = 'virsh # ';

/** Whether a shell can be given these arguments: its commands are lines, so no control characters
 *  (a tab or newline in a domain name: such a call runs as a process). */
export function sayable(args: readonly string[]): boolean {
  return !args.some((a) => /[\x00-\x1f\x7f]/.test(a));
}

/** Quotes one argument for virsh's command parser (single quotes, as a POSIX shell). */
export function quoteArg(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** An idle shell (and its pipes) must not keep this process alive; a busy one must. */
function holdOpen(child: ChildProcessWithoutNullStreams, hold: boolean): void {
  for (const h of [child, child.stdin, child.stdout, child.stderr] as { ref?: () => void; unref?: () => void }[]) {
    if (hold) h.ref?.();
    else h.unref?.();
  }
}

/** Shells started before the program knew it needed them (prestartSession), by URI. */
const prestarted = new Map<string, VirshSession>();

/**
 * Starts a shell for `uri` now, for the first Virsh of that URI to take (Virsh.warm): bin/vircpt.ts
 * calls it before loading the program, so virsh loads libvirt and connects meanwhile. Idle, it
 * does not keep this process alive.
 */
export function prestartSession(uri: string): void {
  if (prestarted.has(uri)) return;
  const session = new VirshSession(uri);
  session.start();
  prestarted.set(uri, session);
}

/** The shell prestarted for `uri`, if any; shells prestarted for other URIs are closed unused. */
export function takePrestarted(uri: string): VirshSession | undefined {
  const session = prestarted.get(uri);
  prestarted.delete(uri);
  for (const other of prestarted.values()) other.close();
  prestarted.clear();
  return session;
}

export class VirshSession {
  readonly #uri: string;
  #child: ChildProcessWithoutNullStreams | undefined;
  #out = '';
  #err = '';
  readonly #queue: Pending[] = [];
  #current: Pending | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #id = randomBytes(4).toString('hex');
  #seq = 0;

  constructor(uri: string) {
    this.#uri = uri;
  }

  /** Commands queued or running. */
  get load(): number {
    return this.#queue.length + (this.#current ? 1 : 0);
  }

  /** Runs `virsh ARGS` in the session. Rejects only when the session itself failed. */
  run(args: readonly string[], timeoutMs: number): Promise<SessionResult> {
    if (this.#closed) return Promise.reject(new Error('virsh session closed'));
    // The shell reads lines through readline: a newline would end the command, a tab would ask
    // for completion. Such an argument (a domain name may hold a tab) goes to a virsh process.
    if (!sayable(args)) return Promise.reject(new Error('virsh session: an argument has a control character'));
    return new Promise((resolve, reject) => {
      const marker = `@@vircpt-${this.#id}-${++this.#seq}@@`;
      this.#queue.push({ line: args.map(quoteArg).join(' '), marker, timeoutMs, resolve, reject });
      this.#next();
    });
  }

  /** Starts the shell before its first command (idle: it does not keep this process alive). */
  start(): void {
    if (this.#closed || this.#child) return;
    this.#child = this.#spawn();
    holdOpen(this.#child, false);
  }

  /** Ends the shell; queued commands fail. Idempotent. */
  close(): void {
    this.#closed = true;
    this.#fail(new Error('virsh session closed'));
    this.#child?.stdin.end();
    this.#child = undefined;
  }

  #spawn(): ChildProcessWithoutNullStreams {
    const child = spawn('virsh', ['-q', '-c', this.#uri], { env: { ...process.env, LC_ALL: 'C' }, stdio: 'pipe' });
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (s: string) => { if (this.#child === child) { this.#out += s; this.#check(); } });
    child.stderr.on('data', (s: string) => { if (this.#child === child) { this.#err += s; this.#check(); } });
    child.stdin.on('error', () => undefined); // reported by 'exit'/'error' below
    const gone = (why: string) => {
      if (this.#child !== child) return;
      this.#child = undefined;
      // The command in progress fails; queued ones get a fresh shell.
      const cur = this.#current;
      this.#current = undefined;
      clearTimeout(this.#timer);
      cur?.reject(new Error(`virsh session ended (${why})`));
      this.#next();
    };
    child.on('error', (e) => gone(e.message));
    child.on('exit', (code, sig) => gone(sig ? `signal ${sig}` : `exit code ${code}`));
    this.#out = '';
    this.#err = '';
    return child;
  }

  #next(): void {
    if (this.#current || this.#closed) return;
    const p = this.#queue.shift();
    if (!p) return;
    this.#child ??= this.#spawn();
    this.#current = p;
    holdOpen(this.#child, true);
    this.#timer = setTimeout(() => {
      // A stuck command: kill the shell; the next command starts a new one.
      const child = this.#child;
      this.#child = undefined;
      this.#current = undefined;
      child?.kill('SIGKILL');
      p.reject(Object.assign(new Error(`timed out after ${p.timeoutMs} ms`), { timedOut: true }));
      this.#next();
    }, p.timeoutMs);
    this.#child.stdin.write(`${p.line}\necho --err ${p.marker}\necho ${p.marker}\n`);
  }

  #check(): void {
    const p = this.#current;
    if (!p) return;
    const outEnd = `${PROMPT}echo ${p.marker}\n${p.marker}`;
    const errEnd = `error: ${p.marker}\n`;
    const o = this.#out.indexOf(outEnd);
    const e = this.#err.indexOf(errEnd);
    if (o < 0 || e < 0) return;
    let stdout = this.#out.slice(0, o);
    this.#out = this.#out.slice(o + outEnd.length);
    const stderr = this.#err.slice(0, e);
    this.#err = this.#err.slice(e + errEnd.length);
    // Drop the echoed command line before the output, and the echoed first marker after it.
    // readline breaks an echo wider than its screen with carriage returns (in the C locale each
    // byte of a UTF-8 name counts as four columns), so the echo is found by the prompt and the
    // command's first word, and ends at the first newline: the line itself never holds one.
    const at = stdout.indexOf(`${PROMPT}${p.line.slice(0, p.line.indexOf(' ') >>> 0)}`);
    if (at >= 0) {
      const nl = stdout.indexOf('\n', at);
      stdout = nl < 0 ? '' : stdout.slice(nl + 1);
    }
    const tail = stdout.lastIndexOf(`${PROMPT}echo --err ${p.marker}\n`);
    if (tail >= 0) stdout = stdout.slice(0, tail);
    clearTimeout(this.#timer);
    this.#current = undefined;
    if (this.#child && this.#queue.length === 0) holdOpen(this.#child, false);
    p.resolve({ stdout, stderr, ok: stderr.trim().length === 0 });
    this.#next();
  }

  #fail(err: Error): void {
    clearTimeout(this.#timer);
    const all = [...(this.#current ? [this.#current] : []), ...this.#queue.splice(0)];
    this.#current = undefined;
    for (const p of all) p.reject(err);
  }
}
