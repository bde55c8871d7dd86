// The text log format: one line per record, its fields as key=value after the message.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatFields, textDestination } from '../src/log.js';

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
