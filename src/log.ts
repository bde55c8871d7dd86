// Logging: pino, one child logger per component. Constructed in bin/, passed down. pino is
// loaded on first use (it costs a short-lived `vircpt` tens of milliseconds of start-up, and a
// vircpt that logs nothing at its level never needs it: lazyLogger).
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import type { Logger } from 'pino';

export type { Logger };

type Pino = typeof import('pino').pino;
let loaded: Pino | undefined;
/** pino itself, loaded (synchronously: it is CommonJS) the first time a logger is made. */
function pinoModule(): Pino {
  return (loaded ??= (createRequire(import.meta.url)('pino') as { pino: Pino }).pino);
}

export interface LogOptions {
  level?: 'debug' | 'info' | 'warn' | 'error' | 'silent';
  /** A file to append to (daemon mode); standard error otherwise. */
  file?: string;
  /** 'text' (default): one human line per record, prefixed; 'json': pino's own lines. */
  format?: 'text' | 'json';
  /** For text lines: what precedes each (the program's name). */
  prefix?: string;
  /** Send the lines to syslog (the journal, under systemd) through logger(1), tagged with this. */
  syslogTag?: string;
  /** Where the lines go if logger(1) cannot be started or dies (default: standard error). */
  fallbackFile?: string;
  /** The syslog program (default logger; tests name another). */
  syslogProgram?: string;
}

const LEVEL_WORD: Record<string, string> = { warn: 'warning', error: 'error', info: 'info', debug: 'debug', fatal: 'fatal', trace: 'trace' };

/** One field's value, short and on one line: arrays joined by spaces, quoted when it holds spaces. */
function fieldValue(v: unknown): string {
  let s: string;
  if (Array.isArray(v)) s = v.map((x) => (typeof x === 'object' && x !== null ? JSON.stringify(x) : String(x))).join(' ');
  else if (v instanceof Object) s = typeof (v as { message?: unknown }).message === 'string' ? (v as { message: string }).message : JSON.stringify(v);
  else s = String(v);
  return s === '' || /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

/** ` key=value` for each field of a record beyond level, time and message, unless the message already shows its value. */
export function formatFields(o: Record<string, unknown>): string {
  const msg = typeof o.msg === 'string' ? o.msg : '';
  let out = '';
  for (const [k, v] of Object.entries(o)) {
    // c: the component of a child logger; the JSON format keeps it, a human line need not.
    if (k === 'level' || k === 'time' || k === 'msg' || k === 'c' || v === undefined) continue;
    if (typeof v === 'string' && v !== '' && msg.includes(v)) continue;
    out += ` ${k}=${fieldValue(v)}`;
  }
  return out;
}

/** A pino destination that turns each JSON record into `prefix: [time ]level: message key=value...`. */
export function textDestination(write: (line: string) => void, prefix: string, withTime: boolean) {
  return {
    write(record: string): void {
      try {
        const o = JSON.parse(record) as { level: string; msg?: string; time?: string };
        const time = withTime && o.time ? `${o.time} ` : '';
        write(`${time}${prefix}${LEVEL_WORD[o.level] ?? o.level}: ${o.msg ?? ''}${formatFields(o)}\n`);
      } catch {
        write(record);
      }
    },
  };
}

/** A human-readable line logger: `time level component: message key=value`. */
export function createLogger(opts: LogOptions = {}): Logger {
  const pino = pinoModule();
  const raw = opts.syslogTag
    ? syslogDestination(opts.syslogTag, opts.syslogProgram ?? 'logger', opts.fallbackFile)
    : opts.file
      ? pino.destination({ dest: opts.file, append: true, mkdir: true, sync: true })
      : pino.destination({ dest: 2, sync: true });
  const prefix = opts.prefix ? `${opts.prefix}: ` : '';
  const dest = opts.format === 'json' ? raw : textDestination((l) => raw.write(l), prefix, !!opts.file);
  return pino(
    {
      level: opts.level ?? 'info',
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    dest,
  );
}

/**
 * Lines to syslog through logger(1) (util-linux), the standard way for a shell-less daemon. If
 * logger cannot start or dies, the lines go to `fallbackFile` (standard error without one), the
 * first of them saying so: a line whose write to logger failed is written there too. (Lines that
 * logger read but had not sent when it died are lost: at most a pipe's worth.)
 */
function syslogDestination(tag: string, program: string, fallbackFile: string | undefined): { write(line: string): void } {
  const pino = pinoModule();
  const child = spawn(program, ['--id', '-t', tag], { stdio: ['pipe', 'ignore', 'ignore'] });
  let fallback: { write(line: string): void } | undefined;
  const fallBack = (why: string) => {
    if (fallback) return fallback;
    fallback = fallbackFile
      ? pino.destination({ dest: fallbackFile, append: true, mkdir: true, sync: true })
      : pino.destination({ dest: 2, sync: true });
    fallback.write(`${new Date().toISOString()} ${tag}: warning: ${program}(1) ${why}; logging to ${fallbackFile ?? 'standard error'} from now on\n`);
    return fallback;
  };
  child.on('error', (err) => fallBack(`could not run: ${err.message}`));
  child.on('exit', (code, sig) => fallBack(`exited (${sig ?? `code ${code}`})`));
  child.stdin.on('error', () => undefined); // each failed write is handled by its callback
  child.unref();
  (child.stdin as unknown as { unref?: () => void }).unref?.();
  // syslog adds time and tag to a line; in the file they are written here.
  const stamped = (line: string) => `${new Date().toISOString()} ${tag}: ${line}`;
  return {
    write: (line: string) => {
      if (fallback) return void fallback.write(stamped(line));
      child.stdin.write(line, (err) => { if (err) fallBack(`failed (${err.message})`).write(stamped(line)); });
    },
  };
}

const LEVELS = ['debug', 'info', 'warn', 'error'] as const;
type Level = (typeof LEVELS)[number];

/**
 * createLogger(opts) made on the first record at or above opts.level (or never): records below
 * the level cost nothing, and neither does pino's loading. Its children are lazy the same way.
 * Only what the program calls is there: debug, info, warn, error and child.
 */
export function lazyLogger(opts: LogOptions): Logger {
  let real: Logger | undefined;
  const make = () => (real ??= createLogger(opts));
  const min = opts.level === 'silent' ? LEVELS.length : LEVELS.indexOf(opts.level ?? 'info');
  const lazy = (get: () => Logger): Logger => {
    const out: Record<string, unknown> = {
      child: (bindings: Record<string, unknown>) => {
        let child: Logger | undefined;
        return lazy(() => (child ??= get().child(bindings)));
      },
    };
    for (const [i, level] of LEVELS.entries()) {
      out[level] = i < min ? () => undefined : (...args: unknown[]) => (get()[level as Level] as (...a: unknown[]) => void)(...args);
    }
    return out as unknown as Logger;
  };
  return lazy(make);
}
