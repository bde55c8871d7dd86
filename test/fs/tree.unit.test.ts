// The path model (src/fs/tree.ts): what each path of the mount names.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { diskFileName, parsePath } from '../../src/fs/tree.js';

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
