// The text log format: one line per record, its fields as key=value after the message.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger, formatFields, lazyLogger, textDestination } from '../src/log.js';

describe('text log lines', () => {
  it('appends fields as key=value: arrays joined by spaces, quoted when they hold spaces', () => {
    assert.equal(formatFields({ level: 'debug', time: 't', msg: 'virsh', args: ['domstate', '--', 'vm1'], ms: 52, exit: 0 }),
      ' args="domstate -- vm1" ms=52 exit=0');
    assert.equal(formatFields({ msg: 'x', err: new Error('it broke') }), ' err="it broke"');
    assert.equal(formatFields({ msg: 'x', two: 'a\nb', none: undefined }), ' two="a\\nb"');
  });

  it('leaves out a field whose value the message already shows', () => {
    assert.equal(formatFields({ msg: 'export started: vm1 (checkpoint c1)', domain: 'vm1', checkpoint: 'c1', socket: '/run/x.sock' }),
      ' socket=/run/x.sock');
  });

  it('writes prefix, level, message and fields on one line', () => {
    const lines: string[] = [];
    const dest = textDestination((l) => lines.push(l), 'vircpt: ', false);
    dest.write(`${JSON.stringify({ level: 'debug', time: '2026-01-01T00:00:00Z', msg: 'virsh', args: ['list'], ms: 7 })}\n`);
    dest.write(`${JSON.stringify({ level: 'warn', msg: 'careful' })}\n`);
    assert.deepEqual(lines, ['vircpt: debug: virsh args=list ms=7\n', 'vircpt: warning: careful\n']);
  });
});

describe('lazyLogger (vircpt: pino loaded only for a record at its level)', () => {
  it('drops records below its level, writes the others, children with their fields', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'vircptfs-lazylog-'));
    try {
      const file = path.join(dir, 'log');
      const log = lazyLogger({ level: 'warn', prefix: 'vircpt', file });
      const child = log.child({ c: 'virsh' });
      child.info('hidden');
      log.debug('hidden');
      assert.equal(await readFile(file, 'utf8').catch(() => 'no file'), 'no file', 'nothing made below the level');
      child.warn({ domain: 'vm1', extra: 1 }, 'careful');
      log.error('broken');
      const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean).map((l) => l.replace(/^\S+ /, ''));
      assert.deepEqual(lines, ['vircpt: warning: careful domain=vm1 extra=1', 'vircpt: error: broken']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('syslog through logger(1)', () => {
  const waitFor = async (what: string, cond: () => Promise<boolean>) => {
    const deadline = Date.now() + 10_000;
    while (!(await cond())) {
      if (Date.now() > deadline) assert.fail(`timed out waiting: ${what}`);
      await sleep(20);
    }
  };

  it('when logger dies, the lines go to the fallback file, the first saying so once', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'vircpt-log-'));
    try {
      // A fake logger(1): takes one line, then exits.
      const fake = path.join(dir, 'logger');
      await writeFile(fake, `#!/bin/sh\nhead -n 1 > ${dir}/syslog\n`, { mode: 0o755 });
      const fallback = path.join(dir, 'fallback.log');
      const read = (f: string) => readFile(f, 'utf8').catch(() => '');
      const log = createLogger({ syslogTag: 'vircptfs', syslogProgram: fake, fallbackFile: fallback });
      log.info('first line');
      await waitFor('the fake logger took the first line and the fallback was announced', async () =>
        (await read(`${dir}/syslog`)).includes('first line') && (await read(fallback)).includes('exited'));
      log.warn('second line');
      log.error('third line');
      const lines = (await read(fallback)).trim().split('\n');
      assert.equal(lines.length, 3, lines.join('\n'));
      assert.match(lines[0]!, /vircptfs: warning: .*logger\(1\) exited \(code 0\); logging to .*fallback\.log from now on$/);
      assert.match(lines[1]!, /warning: second line$/);
      assert.match(lines[2]!, /error: third line$/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('when logger cannot run, no line is lost', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'vircpt-log-'));
    try {
      const fallback = path.join(dir, 'fallback.log');
      const log = createLogger({ syslogTag: 'vircptfs', syslogProgram: path.join(dir, 'no-such-logger'), fallbackFile: fallback });
      log.info('right away');
      await waitFor('the line in the fallback file', async () => (await readFile(fallback, 'utf8').catch(() => '')).includes('right away'));
      assert.match(await readFile(fallback, 'utf8'), /could not run: .*ENOENT/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
