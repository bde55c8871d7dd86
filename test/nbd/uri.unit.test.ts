// NBD URIs as libnbd reads and writes them (nbdinfo prints the same strings; the qemu-nbd
// test compares our URI with nbdinfo's for a live export).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import { formatNbdUri, parseNbdUri } from '../../src/nbd/uri.js';

describe('NBD URIs', () => {
  it('reads the Unix socket form', () => {
    assert.deepEqual(parseNbdUri('nbd+unix:///sda?socket=/var/tmp/x.sock'), { exportName: 'sda', socketPath: '/var/tmp/x.sock', tls: false });
    assert.deepEqual(parseNbdUri('nbd+unix://?socket=/s'), { exportName: '', socketPath: '/s', tls: false });
    assert.deepEqual(parseNbdUri('nbds+unix:///a%20b?foo&socket=%2Fp%26q;x=1'), { exportName: 'a b', socketPath: '/p&q', tls: true });
  });

  it('reads the TCP form with the default port and IPv6 literals', () => {
    assert.deepEqual(parseNbdUri('nbd://example.com/disk'), { exportName: 'disk', host: 'example.com', port: 10809, tls: false });
    assert.deepEqual(parseNbdUri('nbd://127.0.0.1:10810'), { exportName: '', host: '127.0.0.1', port: 10810, tls: false });
    assert.deepEqual(parseNbdUri('nbd://[::1]:1234//disk'), { exportName: '/disk', host: '::1', port: 1234, tls: false });
    assert.deepEqual(parseNbdUri('nbds://user@h/x'), { exportName: 'x', host: 'h', port: 10809, tls: true });
    assert.deepEqual(parseNbdUri('nbd:///e'), { exportName: 'e', host: 'localhost', port: 10809, tls: false });
  });

  it('rejects what libnbd rejects', () => {
    for (const bad of ['/tmp/sock', 'nbd:/x', 'http://h/x', 'nbd+unix:///x', 'nbd://h/x?socket=/s', 'nbd://h:99999/x', 'nbd://h/%zz']) {
      assert.throws(() => parseNbdUri(bad), (e) => isVircptError(e, 'INVALID'), bad);
    }
  });

  it('writes URIs that read back to the same target', () => {
    const targets = [
      { exportName: 'sda', socketPath: '/var/tmp/vircpt-1/sda.sock' },
      { exportName: '', socketPath: '/tmp/a b&c;d#e%f' },
      { exportName: 'a b/ü:%', socketPath: '/s' },
      { exportName: 'disk', host: '127.0.0.1', port: 10810 },
      { exportName: '', host: '::1', port: 10809 },
    ];
    for (const t of targets) assert.deepEqual(parseNbdUri(formatNbdUri(t)), { ...t, tls: false }, JSON.stringify(t));
    assert.equal(formatNbdUri(targets[0]!), 'nbd+unix:///sda?socket=/var/tmp/vircpt-1/sda.sock');
    assert.equal(formatNbdUri(targets[3]!), 'nbd://127.0.0.1:10810/disk');
    assert.equal(formatNbdUri(targets[4]!), 'nbd://[::1]:10809/');
  });
});
