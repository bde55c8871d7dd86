// The path model on its own (src/fs/tree.ts): what each path of the mount names, which names a
// path can hold as they are (libvirt 9.0 refuses every domain name that fails this, so a real
// mount cannot show the left-out case), and ENAMETOOLONG.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { diskFileName, isPathComponent, parsePath } from '../../src/fs/tree.js';

test('parsePath: root, domain, checkpoint, disk, map; anything else is none', () => {
  assert.deepEqual(parsePath('/'), { kind: 'root' });
  assert.deepEqual(parsePath(''), { kind: 'root' });
  assert.deepEqual(parsePath('/vm1'), { kind: 'domain', domain: 'vm1' });
  assert.deepEqual(parsePath('/vm1/c1/'), { kind: 'checkpoint', domain: 'vm1', checkpoint: 'c1' });
  assert.deepEqual(parsePath('/vm1/c1/sda.raw'), { kind: 'disk', domain: 'vm1', checkpoint: 'c1', target: 'sda' });
  assert.deepEqual(parsePath('//vm1//c1//vdb.raw'), { kind: 'disk', domain: 'vm1', checkpoint: 'c1', target: 'vdb' });
  assert.deepEqual(parsePath('/vm1/c1/dirty-map.json'), { kind: 'map', domain: 'vm1', checkpoint: 'c1' });
  for (const p of ['/vm1/c1/.raw', '/vm1/c1/sda', '/vm1/c1/sda.raw/x', '/vm1/../c1', '/./vm1', '/vm1/c1/sda.qcow2']) {
    assert.deepEqual(parsePath(p), { kind: 'none' }, p);
  }
  assert.deepEqual(parsePath(`/vm1/c1/${diskFileName('sdb')}`), { kind: 'disk', domain: 'vm1', checkpoint: 'c1', target: 'sdb' });
});

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
