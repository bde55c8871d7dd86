// vircpt's pino-free logger writes exactly the lines log.ts's text format writes through pino.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import { textLogger } from '../../src/cli/text-log.js';
import { textDestination, type Logger } from '../../src/log.js';

type Pino = typeof import('pino').pino;

/** A pino logger as log.ts's createLogger makes one for standard error, writing into `lines`. */
function pinoText(lines: string[]): Logger {
  const pino = (createRequire(import.meta.url)('pino') as { pino: Pino }).pino;
  return pino({
    level: 'warn', base: undefined, timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, textDestination((l) => lines.push(l), 'vircpt: ', false));
}

function drive(log: Logger): void {
  log.info({ domain: 'vm1' }, 'not at this level');
  log.debug('nor this');
  log.warn({ domain: 'vm1' }, 'domain vm1: guest agent not reachable');
  log.warn('plain');
  log.error({ domain: 'vm1', err: new Error('it broke'), args: ['a', 'b c'] }, 'release failed');
  log.child({ c: 'virsh', socket: '/run/x.sock' }).warn({ ms: 5 }, 'from a child');
}

describe('vircpt text logger', () => {
  it('writes warnings and errors as pino with the text destination does, and nothing below', () => {
    const ours: string[] = [];
    const theirs: string[] = [];
    drive(textLogger('vircpt', (l) => ours.push(l)));
    drive(pinoText(theirs));
    assert.equal(ours.length, 4);
    assert.deepEqual(ours, theirs);
  });
});
