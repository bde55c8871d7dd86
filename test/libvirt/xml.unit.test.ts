// libvirt's XML in and out (src/libvirt/): the parsers on XML shaped like libvirt 9.0's, and the
// backup XML the product, the tests and the bench all build.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backupXml, exportBitmapName, parseBackupXml } from '../../src/libvirt/backup.js';
import { checkpointXml, parseCheckpointXml } from '../../src/libvirt/checkpoint.js';
import { checkpointable, parseDomainXml } from '../../src/libvirt/domain.js';

const DOMAIN = `<domain type='qemu' id='3'>
  <name>vm1</name><uuid>1a8182be-d8d6-40ea-bd47-cd7749963a4a</uuid>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/sda.qcow2'/>
      <target dev='sda' bus='sata'/><alias name='sata0-0-0'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/x'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sdc' bus='sata'/></disk>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+994</label></seclabel>
</domain>`;

test('parseDomainXml: disks (no cdrom), formats, sources, the DAC label, the agent channel', () => {
  const d = parseDomainXml(DOMAIN, 'paused');
  assert.equal(d.name, 'vm1');
  assert.equal(d.active, true);
  assert.deepEqual(d.disks.map((x) => [x.target, x.format, x.source, x.sourceType, x.bus, x.alias]), [
    ['sda', 'qcow2', '/img/sda.qcow2', 'file', 'sata', 'sata0-0-0'],
    ['vdb', 'raw', '/dev/vg/x', 'block', 'virtio', undefined],
  ]);
  assert.deepEqual(d.disks.map(checkpointable), [true, false]);
  assert.deepEqual(d.qemuUser, { uid: 64055, gid: 994 });
  assert.equal(d.agentChannel, true);
  assert.equal(parseDomainXml(DOMAIN, 'shut off').active, false);
  assert.throws(() => parseDomainXml('<other/>', 'running'), /without <domain>/);
});

test('parseCheckpointXml: name, parent, creation time, disks with and without a bitmap', () => {
  const c = parseCheckpointXml(`<domaincheckpoint><name>c2</name><parent><name>c1</name></parent>
    <creationTime>1764000000</creationTime><disks><disk name='sda' checkpoint='bitmap' bitmap='c2'/>
    <disk name='vdb' checkpoint='no'/></disks></domaincheckpoint>`);
  assert.deepEqual(c, { name: 'c2', parent: 'c1', creationTime: 1764000000, disks: [
    { target: 'sda', checkpoint: 'bitmap', bitmap: 'c2' }, { target: 'vdb', checkpoint: 'no', bitmap: undefined }] });
});

test('checkpointXml: the chosen disks get a bitmap, the others are left out by name', () => {
  const disks = parseDomainXml(DOMAIN, 'running').disks;
  const back = parseCheckpointXml(checkpointXml('c3', disks, new Set(['sda'])));
  assert.equal(back.name, 'c3');
  assert.deepEqual(back.disks, [{ target: 'sda', checkpoint: 'bitmap', bitmap: undefined }, { target: 'vdb', checkpoint: 'no', bitmap: undefined }]);
});

test('backupXml and parseBackupXml: what is built reads back the same, export and bitmap names set', () => {
  const req = { incremental: 'c1', socket: '/run/x/nbd.sock', disks: [{ target: 'sda', scratch: '/s/sda.qcow2' }], skip: ['vdb'] };
  const job = parseBackupXml(backupXml(req));
  assert.deepEqual(job, {
    incremental: 'c1', transport: 'unix', socket: '/run/x/nbd.sock', host: undefined, port: undefined,
    disks: [{ target: 'sda', exportName: 'sda', exportBitmap: exportBitmapName('sda'), scratch: '/s/sda.qcow2' }],
  });
  const full = parseBackupXml(backupXml({ ...req, incremental: undefined }));
  assert.equal(full.incremental, undefined);
  assert.equal(full.disks[0]!.exportBitmap, undefined, 'no bitmap without an incremental base');
  const tcp = parseBackupXml(`<domainbackup mode='pull'><server transport='tcp' name='h' port='10809'/><disks>
    <disk name='vda' backup='yes' exportname='vda'/></disks></domainbackup>`);
  assert.deepEqual([tcp.transport, tcp.host, tcp.port], ['tcp', 'h', 10809]);
});
