// The pure parts of remote exports: which URIs are remote, the option values, the job XML, the
// owner read back from a job's scratch file names, and what a failed backup-begin means.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import { nbdUri } from '../../src/exports/export.js';
import { beginFailure, remoteOwner, remoteScratchPath } from '../../src/exports/remote-export.js';
import { parsePorts, parseTlsMode, remoteTarget } from '../../src/exports/remote.js';
import { hostId } from '../../src/exports/runtime.js';
import { parseFsArgs } from '../../src/fs/options.js';
import { backupXml, parseBackupXml } from '../../src/libvirt/backup.js';
import { isRemoteUri, parseLibvirtUri } from '../../src/libvirt/uri.js';

test('remote is decided by the URI\'s host and transport', () => {
  for (const uri of ['qemu:///system', 'qemu:///session', 'qemu+unix:///system', 'qemu+unix:///system?socket=/run/x.sock', 'test:///default']) {
    assert.equal(isRemoteUri(uri), false, uri);
  }
  for (const uri of ['qemu+ssh://root@host/system', 'qemu+tls://host.example/system', 'qemu://host/system', 'qemu+tcp://10.0.0.1:16509/system',
    'qemu+ssh:///system', 'qemu+libssh2://u@h/system?known_hosts=/k', 'qemu+ssh://root@localhost/system?keyfile=/k&no_tty=1', 'qemu+tls://[::1]/system']) {
    assert.equal(isRemoteUri(uri), true, uri);
  }
  // A host-like string in the path or the query is no host.
  assert.equal(isRemoteUri('qemu:///system?socket=//host/x'), false);
  const u = parseLibvirtUri('qemu+ssh://root@h1:2222/system?keyfile=/a%20b&no_tty=1');
  assert.deepEqual([u.driver, u.transport, u.user, u.host, u.port, u.path, u.params.get('keyfile')], ['qemu', 'ssh', 'root', 'h1', 2222, '/system', '/a b']);
});

test('defaults: bind and dial the URI\'s host, require TLS off loopback, prefer on it', () => {
  const far = remoteTarget('qemu+ssh://root@hv1.example/system');
  assert.deepEqual([far.bind, far.host, far.tls, far.certs, far.ports], ['hv1.example', 'hv1.example', 'require', '/etc/pki/libnbd', { from: 10809, to: 10872 }]);
  assert.equal(remoteTarget('qemu+ssh://root@localhost/system').tls, 'prefer');
  assert.equal(remoteTarget('qemu+tls://127.0.0.3/system').tls, 'prefer');
  assert.equal(remoteTarget('qemu+ssh://hv/system', { host: '127.0.0.2' }).tls, 'prefer', 'loopback is where we dial');
  const set = remoteTarget('qemu+ssh://hv/system', { bind: '0.0.0.0', host: 'hv.example', tls: 'off', ports: { from: 1, to: 2 }, certs: '/c' });
  assert.deepEqual([set.bind, set.host, set.tls, set.certs], ['0.0.0.0', 'hv.example', 'off', '/c']);
});

test('option values: one clear line for each bad one', () => {
  assert.deepEqual(parsePorts('10809-10872'), { from: 10809, to: 10872 });
  for (const bad of ['10809', '10872-10809', '0-5', '1-70000', 'a-b']) {
    assert.throws(() => parsePorts(bad), (e: unknown) => isVircptError(e, 'USAGE') && /nbd_ports=.*FROM-TO/.test(e.message));
  }
  assert.equal(parseTlsMode('prefer'), 'prefer');
  assert.throws(() => parseTlsMode('yes'), /nbd_tls=yes: expected require, prefer or off/);
  const o = parseFsArgs(['-o', 'nbd_bind=0.0.0.0,nbd_host=hv,nbd_ports=2000-2009,nbd_tls=off,nbd_certs=/c', 'qemu+ssh://hv/system', '/mnt']);
  assert.deepEqual(o.remote, { bind: '0.0.0.0', host: 'hv', ports: { from: 2000, to: 2009 }, tls: 'off', certs: '/c' });
  assert.throws(() => parseFsArgs(['-o', 'nbd_tls', 'qemu:///system', '/mnt']), /nbd_tls needs a value/);
});

test('the job XML asks for TCP with TLS, and reads back', () => {
  const xml = backupXml({ incremental: 'c1', tcp: { name: '127.0.0.1', port: 10810, tls: true }, disks: [{ target: 'sda', scratch: '/var/tmp/s.qcow2' }], skip: ['vdb'] });
  assert.match(xml, /<server transport="tcp" name="127.0.0.1" port="10810" tls="yes"\/?>/);
  const job = parseBackupXml(xml);
  assert.deepEqual([job.transport, job.host, job.port, job.socket, job.disks.map((d) => d.target)], ['tcp', '127.0.0.1', 10810, undefined, ['sda']]);
});

test('a remote job\'s owner is read from its scratch file names', () => {
  const scratch = remoteScratchPath('/var/tmp', 'abc123', 'fs-4242-99', 'vm 1', 'sda');
  assert.match(scratch, /^\/var\/tmp\/vircptfs-abc123-fs-4242-99-vm_1~[0-9a-f]{8}-sda\.scratch\.qcow2$/);
  const job = { incremental: 'c1', transport: 'tcp', socket: undefined, host: 'h', port: 1, disks: [{ target: 'sda', exportName: 'sda', exportBitmap: undefined, scratch }] };
  assert.deepEqual(remoteOwner(job), { host: 'abc123', instance: 'fs-4242-99' });
  assert.deepEqual(remoteOwner({ ...job, disks: [{ ...job.disks[0]!, scratch: '/var/tmp/vircptfs-h1-export-vm-sda.scratch.qcow2' }] }), { host: 'h1', instance: 'export' });
  assert.equal(remoteOwner({ ...job, disks: [{ ...job.disks[0]!, scratch: '/var/tmp/other-tool.qcow2' }] }), undefined);
});

test('the host id: /etc/machine-id, or the test-only VIRCPTFS_HOST_ID', () => {
  assert.match(hostId({}), /^([0-9a-f]{12}|nohostid)$/);
  assert.equal(hostId({ VIRCPTFS_HOST_ID: 'hostb' }), 'hostb');
  assert.equal(hostId({ VIRCPTFS_HOST_ID: 'Bad-Id' }), hostId({}), 'only [a-z0-9] is taken');
});

test('what a failed backup-begin means', () => {
  assert.equal(beginFailure("internal error: unable to execute QEMU command 'nbd-server-start': Failed to find an available port: Address already in use"), 'busy');
  assert.equal(beginFailure("internal error: unable to execute QEMU command 'object-add': Unable to access credentials /etc/pki/qemu/ca-cert.pem: No such file or directory"), 'no-credentials');
  assert.equal(beginFailure('Requested operation is not valid: domain is not running'), 'other');
});

test('nbds:// URIs carry the certificate folder as libnbd takes it', () => {
  const remote = { uri: 'qemu+ssh://hv/system', host: 'hv', port: 10811, tls: true, certs: '/etc/pki/libnbd', hostId: 'x' };
  assert.equal(nbdUri({ socket: '', exportName: 'sda' }, remote), 'nbds://hv:10811/sda?tls-certificates=/etc/pki/libnbd');
  assert.equal(nbdUri({ socket: '', exportName: 'sda' }, { ...remote, tls: false, host: '::1' }), 'nbd://[::1]:10811/sda');
});
