// Running a program to completion with node:child_process: a deadline, a cancel signal, its
// output kept. What the product needs of execa in its hot path, without execa's module loading
// in every short-lived `vircpt` process (docs/benchmarks.md, "Start-up of vircpt").
import { spawn } from 'node:child_process';

export interface RunOptions {
  /** Killed (SIGTERM, then SIGKILL) after this many ms. */
  timeoutMs?: number;
  /** Killed the same way when this aborts. */
  signal?: AbortSignal | undefined;
  /** Written to standard input; without it, standard input is /dev/null. */
  input?: string | undefined;
  /** Added to this process's environment. */
  env?: Record<string, string>;
}

export interface RunResult {
  /** The exit status; null when a signal ended it or it never started. */
  exitCode: number | null;
  killedBy: NodeJS.Signals | null;
  /** Without the final newline. */
  stdout: string;
  stderr: string;
  timedOut: boolean;
  aborted: boolean;
  /** Set when it could not start (code ENOENT: not installed) or its pipes failed. */
  error: NodeJS.ErrnoException | undefined;
}

/** A child that ignores SIGTERM gets SIGKILL this long after. */
const FORCE_KILL_MS = 5_000;

/** `s` without one final newline (what a program's output is taken as). */
export function stripFinalNewline(s: string): string {
  return s.endsWith('\r\n') ? s.slice(0, -2) : s.endsWith('\n') ? s.slice(0, -1) : s;
}

/** Runs `file args...` (no shell); never rejects: the result says how it ended. */
export function runProgram(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(file, args, {
      env: opts.env ? { ...process.env, ...opts.env } : process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    let timedOut = false;
    let aborted = false;
    let error: NodeJS.ErrnoException | undefined;
    let forceTimer: NodeJS.Timeout | undefined;
    const kill = () => {
      child.kill('SIGTERM');
      forceTimer ??= setTimeout(() => child.kill('SIGKILL'), FORCE_KILL_MS).unref();
    };
    const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => { timedOut = true; kill(); }, opts.timeoutMs);
    const onAbort = () => { aborted = true; kill(); };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.signal?.aborted) onAbort();
    let settled = false;
    const settle = (exitCode: number | null, killedBy: NodeJS.Signals | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(forceTimer);
      opts.signal?.removeEventListener('abort', onAbort);
      resolve({
        exitCode, killedBy, timedOut, aborted, error,
        stdout: stripFinalNewline(Buffer.concat(out).toString('utf8')),
        stderr: stripFinalNewline(Buffer.concat(err).toString('utf8')),
      });
    };
    child.on('error', (e: NodeJS.ErrnoException) => {
      error ??= e;
      if (child.pid === undefined) settle(null, null); // it never started: no 'close' follows
    });
    // 'close' waits for the output to end as well; a killed child's descendants may hold its
    // pipes open (ssh under qemu+ssh://), so once we killed it, its exit is enough.
    child.on('exit', (code, sig) => {
      if (!timedOut && !aborted) return;
      settle(code, sig);
      child.stdout!.destroy(); // what a descendant still writes is not ours to wait for
      child.stderr!.destroy();
    });
    child.on('close', (code, sig) => settle(code, sig));
    if (opts.input !== undefined) {
      child.stdin!.on('error', (e: NodeJS.ErrnoException) => { error ??= e; }); // EPIPE: it did not read it all
      child.stdin!.end(opts.input);
    }
  });
}
