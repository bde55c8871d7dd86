// The pure parts of hot-plugging: names, free addresses and the disk XML (the lab tests in
// test/cli/hotadd.test.ts plug them into a real scanner).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { diskName, freeDriveAddress, freeTarget, parseHotplugView, readOnlyDiskXml } from '../../src/libvirt/hotplug.js';
import { parseXml } from '../../src/libvirt/xml.js';

const SCANNER = `<domain type='qemu'><name>scan</name><devices>
  <disk type='file' device='disk'><source file='/a.qcow2'/><target dev='sda' bus='sata'/><alias name='sata0-0-0'/>
    <address type='drive' controller='0' bus='0' target='0' unit='0'/></disk>
  <disk type='file' device='cdrom'><target dev='sdb' bus='scsi'/><readonly/>
    <address type='drive' controller='0' bus='0' target='0' unit='1'/></disk>
  <controller type='scsi' index='0' model='virtio-scsi'/>
  <controller type='sata' index='0'/>
</devices></domain>`;

describe('hot-plug planning', () => {
  it('names disks as libvirt does: sda..sdz, sdaa..', () => {
    assert.deepEqual([0, 1, 25, 26, 27, 701, 702].map((n) => diskName('sd', n)), ['sda', 'sdb', 'sdz', 'sdaa', 'sdab', 'sdzz', 'sdaaa']);
  });

  it('picks the first name no disk uses (a cdrom counts) and the first free SCSI unit (a SATA address does not)', () => {
    const view = parseHotplugView(SCANNER, 'paused');
    assert.equal(view.details.active, true);
    assert.deepEqual(view.virtioScsi, [0]);
    assert.equal(view.disks.find((d) => d.target === 'sdb')?.readOnly, true);
    assert.equal(freeTarget(view, 'sd', new Set()), 'sdc');
    assert.equal(freeTarget(view, 'sd', new Set(['sdc'])), 'sdd');
    assert.deepEqual(freeDriveAddress(view, new Set()), { controller: 0, unit: 0 }); // sda's 0:0:0:0 is SATA's
    assert.deepEqual(freeDriveAddress(view, new Set(['0:0:0:0'])), { controller: 0, unit: 2 }); // the cdrom has unit 1
    const noScsi = parseHotplugView(SCANNER.replace("<controller type='scsi' index='0' model='virtio-scsi'/>", ''), 'running');
    assert.throws(() => freeDriveAddress(noScsi, new Set()), /no virtio-scsi controller/);
  });

  it('writes a read-only NBD disk with an explicit drive address, escaped, that parses back as the same live disk', () => {
    const xml = readOnlyDiskXml({
      source: { socket: "/run/vircptfs/export/a'b/nbd.sock", exportName: 'sda' }, target: 'sdc', bus: 'scsi',
      drive: { controller: 0, unit: 1 }, serial: 'vcpt-sda-000000', alias: 'ua-vcpt-sda-000000',
    });
    const disk = parseXml(xml).disk as Record<string, unknown>[];
    const d = disk[0] as Record<string, Record<string, unknown>>;
    assert.equal(d['@type'], 'network');
    assert.equal(d.source!['@protocol'], 'nbd');
    assert.equal((d.source!.host as Record<string, string>)['@socket'], "/run/vircptfs/export/a'b/nbd.sock");
    assert.ok('readonly' in d);
    assert.deepEqual([d.address!['@controller'], d.address!['@bus'], d.address!['@target'], d.address!['@unit']], ['0', '0', '0', '1']);
    // The same disk parsed back as a live one: what reconcile matches on.
    const live = parseHotplugView(`<domain><name>s</name><devices>${xml}</devices></domain>`, 'running').disks[0];
    assert.deepEqual([live?.alias, live?.socket, live?.exportName, live?.address, live?.serial],
      ['ua-vcpt-sda-000000', "/run/vircptfs/export/a'b/nbd.sock", 'sda', 'scsi 0:0:0:1', 'vcpt-sda-000000']);
  });
});
