// vircpt's logger without -v: warnings and errors as the same one-line text as log.ts writes
// (`vircpt: warning: message key=value`), without loading pino. A vircpt process lives seconds
// and logs a line or two; pino's module tree cost it tens of milliseconds of CPU for the first.
// With -v (debug records, many of them) bin/ uses log.ts's pino logger instead.
import { formatFields, type Logger } from '../log.js';

const WORDS = { warn: 'warning', error: 'error', fatal: 'fatal' } as const;

export function textLogger(prefix: string, write: (line: string) => void, bindings: Record<string, unknown> = {}): Logger {
  const line = (word: string) => (a: unknown, b?: unknown): void => {
    const [fields, msg] = typeof a === 'string' ? [{}, a] : [a as Record<string, unknown>, typeof b === 'string' ? b : ''];
    write(`${prefix}: ${word}: ${msg}${formatFields({ ...bindings, ...fields, msg })}\n`);
  };
  const none = () => undefined;
  const out = {
    level: 'warn',
    trace: none, debug: none, info: none,
    warn: line(WORDS.warn), error: line(WORDS.error), fatal: line(WORDS.fatal),
    child: (more: Record<string, unknown>) => textLogger(prefix, write, { ...bindings, ...more }),
  };
  return out as unknown as Logger;
}
