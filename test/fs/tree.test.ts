// The path model on its own: which names a path can hold as they are (libvirt 9.0 refuses every
// domain name that fails this, so a real mount cannot show the left-out case), and ENAMETOOLONG.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isPathComponent, parsePath } from '../../src/fs/tree.js';

test('names a path component cannot hold are refused; odd but valid ones are kept', () => {
  for (const bad of ['', '.', '..', 'a/b', '/', 'a\0b', 'x'.repeat(256), 'ä'.repeat(128)]) {
    assert.equal(isPathComponent(bad), false, JSON.stringify(bad));
  }
  for (const ok of ['-vm', ' vm\t', 'vm ', '...', '.hidden', 'a b', "q'\"&\\%2f", 'ünï', 'x'.repeat(255), 'ä'.repeat(127)]) {
    assert.equal(isPathComponent(ok), true, JSON.stringify(ok));
  }
});

test('parsePath: a component over 255 bytes wins over everything else', () => {
  assert.deepEqual(parsePath(`/${'x'.repeat(256)}`), { kind: 'too-long' });
  assert.deepEqual(parsePath(`/vm/${'ä'.repeat(128)}/sda.raw`), { kind: 'too-long' });
  assert.deepEqual(parsePath(`/vm/c1/${'x'.repeat(255)}`), { kind: 'none' });
  assert.deepEqual(parsePath('/-vm /c1/sda.raw'), { kind: 'disk', domain: '-vm ', checkpoint: 'c1', target: 'sda' });
  assert.deepEqual(parsePath('/vm/../c1'), { kind: 'none' });
});
