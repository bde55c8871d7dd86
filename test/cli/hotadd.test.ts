// vircpt hotadd / hotremove against a real scanner: a paused q35 lab VM with a virtio-scsi
// controller. What the scanner got is read through the scanner's own QEMU (test/lab/scanner.ts).
import assert from 'node:assert/strict';
import { chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { Lab, virsh, type LabVm } from '../lab/lab.js';
import { errorLines, VIRCPT, vircpt } from '../lab/cli.js';
import { imageToRaw } from '../lab/images.js';
import { leftoversOf } from '../lab/leftovers.js';
import { mountFs } from '../lab/mount.js';
import { attachCalls, blockDevices, liveXml, readThroughScanner, sameBytes, waitFor } from '../lab/scanner.js';
import { requireTools, run } from '../lab/tools.js';
import type { Attachment, ExportRecord } from '../../src/exports/export.js';
import { defaultRuntimeDirs, domainDirName } from '../../src/exports/runtime.js';

const MiB = 1024 * 1024;

describe('vircpt hotadd and hotremove', () => {
  const lab = new Lab('hotadd');
  let vm: LabVm;
  let scanner: LabVm;
  let tmp: string;
  let sockDir: string;
  const cli = (...args: string[]) => vircpt(['-d', vm.name, ...args]);
  /** Undoes whatever a test's hotadd or export left, also when the test failed half-way. */
  const undo = (dom = () => vm.name) => async () => {
    const rec = path.join(defaultRuntimeDirs().runDir, 'export', domainDirName(dom()), 'export.json');
    if (!(await readFile(rec).then(() => true, () => false))) return; // nothing of ours left: the usual case
    await vircpt(['-d', dom(), 'hotremove', '--force', '--wait', '0']);
    await vircpt(['-d', dom(), 'release']);
  };

  before(async () => {
    await requireTools('nbdcopy', 'nbdinfo');
    tmp = await mkdtemp('/var/tmp/vircptfs-test-');
    [vm, scanner] = await Promise.all([
      lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 32 * MiB }, { target: 'vdb', size: 16 * MiB }] }),
      lab.vm({ disks: [{ target: 'sda', bus: 'sata', size: 8 * MiB }], scanner: true }),
    ]);
    // QEMU (libvirt-qemu) makes its sockets and scratch files here: in the lab's folder, which it can traverse.
    sockDir = path.join(lab.dir, 'qemu-made');
    await mkdir(sockDir, { mode: 0o700 });
    await chown(sockDir, Number(await run('id', ['-u', 'libvirt-qemu'])), 0);
    await vm.write('sda', 0, 4 * MiB, 0x11);
    await vm.write('vdb', 0, 1 * MiB, 0x22);
    assert.equal((await cli('create', '--name', 'base')).code, 0);
    await vm.write('sda', 1 * MiB, 2 * MiB, 0xab);
  });
  after(async () => {
    await lab.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  it('SCSI: read-only disks with the checkpoint\'s bytes; hotremove leaves the scanner as it was and nothing behind', async (t) => {
    const xmlBefore = await liveXml(scanner.name);
    const blocksBefore = [...(await blockDevices(scanner.name)).keys()].sort();
    t.after(undo());
    const r = await cli('hotadd', '--name', 'base', '--to', scanner.name, '--json');
    assert.equal(r.code, 0, r.stderr);
    const added = (JSON.parse(r.stdout) as { attachments: Attachment[] }).attachments;
    // The scanner's own SATA sda takes the name, not the SCSI unit: its SCSI disks are sdb and sdc.
    assert.deepEqual(added.map((a) => [a.target, a.scannerTarget, a.bus, a.address]),
      [['sda', 'sdb', 'scsi', 'scsi 0:0:0:0'], ['vdb', 'sdc', 'scsi', 'scsi 0:0:0:1']]);
    for (const a of added) assert.ok(a.serial.length <= 20, `serial ${a.serial} fits virtio-blk`);
    const blocks = await blockDevices(scanner.name);
    for (const a of added) assert.equal(blocks.get(a.alias)?.inserted?.ro, true, `${a.alias} is read-only in the scanner's QEMU`);

    // The point in time is the export's start; the VM is paused, so its image still shows it.
    const expected = path.join(tmp, 'sda.expected');
    await imageToRaw(vm.image('sda'), expected);
    await vm.write('sda', 0, 1 * MiB, 0xee); // after hotadd: must not show on the scanner
    const sdb = added[0]!;
    const attempt = await virsh('qemu-monitor-command', '--hmp', '--', scanner.name, `qemu-io -d ${sdb.alias} "write -P 0x55 0 65536"`);
    assert.match(attempt, /read-only/i, 'a write through the scanner fails');
    const seen = path.join(tmp, 'sda.scanner');
    await readThroughScanner(scanner.name, sdb.alias, sockDir, seen);
    assert.ok(await sameBytes(seen, expected), 'the scanner reads the checkpoint-time bytes, unchanged by either write');

    const info = await cli('info');
    assert.equal(info.code, 0, info.stderr);
    assert.match(info.stdout, new RegExp(`sda -> ${scanner.name} sdb \\(scsi, scsi 0:0:0:0\\) serial ${sdb.serial}`));
    const rel = await cli('release');
    assert.equal(rel.code, 1);
    assert.equal(errorLines(rel.stderr).length, 1, rel.stderr);
    assert.match(rel.stderr, new RegExp(`attached to ${scanner.name} \\(sda as sdb\\), ${scanner.name} \\(vdb as sdc\\)`));

    const rm1 = await cli('hotremove');
    assert.equal(rm1.code, 0, rm1.stderr);
    assert.match(rm1.stdout, /released the export/);
    assert.equal(await liveXml(scanner.name), xmlBefore, 'the scanner\'s live XML is as before');
    assert.deepEqual([...(await blockDevices(scanner.name)).keys()].sort(), blocksBefore);
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual(await leftoversOf(vm.name), []);
  });

  it('refuses a missing or shut-off scanner and a VM with a foreign job, with one line and nothing started', async () => {
    const off = await lab.vm({ disks: [], scanner: true, start: false });
    const xmlBefore = await liveXml(scanner.name);
    const cases: [string, RegExp][] = [
      [`${lab.prefix}-nonexistent`, /scanner domain \S+ not found/],
      [off.name, /scanner domain \S+ is shut off: disks are hot-plugged into a running domain only/],
    ];
    for (const [to, why] of cases) {
      const r = await cli('hotadd', '--name', 'base', '--to', to);
      assert.equal(r.code, 1, r.stdout);
      assert.equal(errorLines(r.stderr).length, 1, r.stderr);
      assert.match(r.stderr, why);
    }
    const sock = path.join(sockDir, 'foreign.sock');
    const xml = `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/>` +
      `<disks><disk name='sda' backup='yes' type='file'><scratch file='${sockDir}/foreign-sda.qcow2'/></disk>` +
      "<disk name='vdb' backup='no'/></disks></domainbackup>";
    await writeFile(path.join(tmp, 'foreign.xml'), xml);
    await virsh('backup-begin', vm.name, path.join(tmp, 'foreign.xml'));
    try {
      const r = await cli('hotadd', '--name', 'base', '--to', scanner.name);
      assert.equal(r.code, 1, r.stdout);
      assert.equal(errorLines(r.stderr).length, 1, r.stderr);
      assert.match(r.stderr, /running Backup job that vircptfs did not start/);
      assert.equal(await vm.jobType(), 'Unbounded', 'the foreign job still runs');
    } finally {
      await virsh('domjobabort', vm.name);
    }
    assert.equal(await liveXml(scanner.name), xmlBefore);
    assert.deepEqual(await leftoversOf(vm.name), []);
  });

  it('a destroyed scanner holds nothing: release then ends the export', async (t) => {
    t.after(undo());
    const r = await cli('hotadd', '--name', 'base', '--to', scanner.name, '-i', 'vdb');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`vdb -> ${scanner.name} sdb \\(scsi, scsi 0:0:0:0\\) serial vcpt-vdb-[0-9a-f]{6}  /dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_vcpt-vdb-`));
    await scanner.destroy();
    try {
      const rel = await cli('release');
      assert.equal(rel.code, 0, rel.stderr);
      assert.equal(await vm.jobType(), 'None');
      assert.deepEqual(await leftoversOf(vm.name), []);
    } finally {
      await scanner.start();
    }
  });

  it('from a mount: a <disk>.raw attached as a read-only file disk (plain virsh attach-device, docs/hotadd.md)', async (t) => {
    // The scanner's QEMU started before this mount: it must see it through mount propagation.
    const m = await mountFs({ options: [`domain=${vm.name}`, 'idle=1', 'allow_other', 'gid=libvirt-qemu', 'umask=0027'] });
    t.after(() => m.cleanup());
    const raw = path.join(m.dir, vm.name, 'base', 'sda.raw');
    const alias = 'ua-scan-sda';
    const xml = `<disk type='file' device='disk'>
  <driver name='qemu' type='raw'/>
  <source file='${raw}'>
    <seclabel model='dac' relabel='no'/>
  </source>
  <target dev='sdb' bus='scsi'/>
  <serial>scan-sda</serial>
  <readonly/>
  <alias name='${alias}'/>
  <address type='drive' controller='0' bus='0' target='0' unit='0'/>
</disk>
`;
    const file = path.join(tmp, 'from-mount.xml');
    await writeFile(file, xml);
    const xmlBefore = await liveXml(scanner.name);
    await virsh('attach-device', '--live', '--', scanner.name, file); // QEMU's open starts the mount's export
    let attached = true;
    const detach = async () => {
      if (!attached) return;
      await virsh('detach-device-alias', '--live', '--', scanner.name, alias);
      await waitFor(async () => !(await liveXml(scanner.name)).includes(alias), `${scanner.name} drops ${alias}`);
      attached = false;
    };
    t.after(detach); // before the unmount (after hooks run last first)
    assert.equal((await blockDevices(scanner.name)).get(alias)?.inserted?.ro, true);
    assert.equal(await vm.jobType(), 'Unbounded', 'the mount\'s export runs while QEMU holds the file');
    const xmlAttached = await liveXml(scanner.name);
    const h = await cli('hotadd', '--name', 'base', '--to', scanner.name);
    assert.equal(h.code, 1, 'hotadd never uses a mount\'s export');
    assert.equal(errorLines(h.stderr).length, 1, h.stderr);
    assert.match(h.stderr, /is exported by a vircptfs mount or command \(instance fs-\d+-\d+\); hotadd needs an export of its own/);
    assert.equal(await liveXml(scanner.name), xmlAttached);
    const expected = path.join(tmp, 'sda.mount-expected');
    await imageToRaw(vm.image('sda'), expected);
    await vm.write('sda', 0, 1 * MiB, 0x77);
    const seen = path.join(tmp, 'sda.mount-scanner');
    await readThroughScanner(scanner.name, alias, sockDir, seen);
    assert.ok(await sameBytes(seen, expected), 'the scanner reads the export\'s point in time');
    await detach();
    assert.equal(await liveXml(scanner.name), xmlBefore);
    await waitFor(async () => (await vm.jobType()) === 'None', 'the mount releases its export once QEMU closed the file');
  });

  it('a shut-off VM: its qemu-nbd export is handed to the scanner\'s QEMU, read-only, and released', async (t) => {
    const off = await lab.vm({ disks: [{ target: 'vda', size: 8 * MiB }] });
    t.after(undo(() => off.name));
    await off.write('vda', 0, 1 * MiB, 0x33);
    assert.equal((await vircpt(['-d', off.name, 'create', '--name', 'c1'])).code, 0);
    await off.destroy();
    const r = await vircpt(['-d', off.name, 'hotadd', '--name', 'c1', '--to', scanner.name, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const [a] = (JSON.parse(r.stdout) as { attachments: Attachment[] }).attachments;
    assert.ok(a);
    assert.equal((await blockDevices(scanner.name)).get(a.alias)?.inserted?.ro, true);
    const expected = path.join(tmp, 'off.expected');
    const seen = path.join(tmp, 'off.scanner');
    await imageToRaw(off.image('vda'), expected);
    await readThroughScanner(scanner.name, a.alias, sockDir, seen);
    assert.ok(await sameBytes(seen, expected));
    const rm1 = await vircpt(['-d', off.name, 'hotremove']);
    assert.equal(rm1.code, 0, rm1.stderr);
    assert.deepEqual(await leftoversOf(off.name), []);
    assert.equal(await off.start().then(() => off.state()), 'paused', 'qemu-nbd let go of the images');
  });

  it('a vircpt killed during hotadd: the next run records what the scanner got, and hotremove takes it away', async (t) => {
    t.after(undo());
    const xmlBefore = await liveXml(scanner.name);
    // Its XML file for virsh, left by the kill, goes to the test's folder.
    const child = execa(process.execPath, [VIRCPT, '-d', vm.name, 'hotadd', '--name', 'base', '--to', scanner.name], { reject: false, env: { TMPDIR: tmp } });
    // Killed once the record names its first attachment, which it writes just before the attach
    // call: the call may not have started, or may run on as an orphan and plug the disk in.
    const recFile = path.join(defaultRuntimeDirs().runDir, 'export', domainDirName(vm.name), 'export.json');
    const recorded = async () => ((JSON.parse(await readFile(recFile, 'utf8').catch(() => '{}')) as ExportRecord).attachments ?? []).length > 0;
    await waitFor(recorded, 'hotadd records its first attachment', 60_000, 5);
    child.kill('SIGKILL');
    await child;
    await waitFor(async () => (await attachCalls(scanner.name)).length === 0, 'no attach-device call of it runs on');
    const info = await cli('info', '--json');
    assert.equal(info.code, 0, info.stderr);
    const listed = (JSON.parse(info.stdout) as { attachments: Attachment[] }).attachments;
    const plugged = new Set([...(await liveXml(scanner.name)).matchAll(/<alias name='(ua-vcpt-[^']+)'\/>/g)].map((m) => m[1]));
    assert.ok(listed.length > 0 && [...plugged].every((p) => listed.some((a) => a.alias === p)), 'every disk the scanner got is recorded');
    // Plugged: attached. Not plugged: its call may still be under way, as far as any later run can tell.
    for (const a of listed) assert.equal(a.state, plugged.has(a.alias) ? 'attached' : 'attaching', a.alias);
    t.diagnostic(`killed with ${listed.length} recorded, ${plugged.size} plugged in`);
    const rm1 = await cli('hotremove', '--wait', '1');
    if (listed.every((a) => plugged.has(a.alias))) {
      assert.equal(rm1.code, 0, rm1.stderr);
    } else {
      assert.equal(rm1.code, 1);
      assert.match(rm1.stderr, /its attach may still be under way/);
      assert.equal((await cli('hotremove', '--force', '--wait', '0')).code, 0);
    }
    assert.equal(await liveXml(scanner.name), xmlBefore);
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual(await leftoversOf(vm.name), []);
  });

  it('reuses a running vircpt export at that checkpoint, and leaves it running at hotremove', async (t) => {
    t.after(undo());
    const ex = await cli('export', '--name', 'base', '--json');
    assert.equal(ex.code, 0, ex.stderr);
    const startedAt = (JSON.parse(ex.stdout) as ExportRecord).startedAt;
    const r = await cli('hotadd', '--name', 'base', '--to', scanner.name, '-x', 'sda', '--json');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { startedAt: string; attachments: Attachment[] };
    assert.equal(out.startedAt, startedAt, 'the same export, the same point in time');
    assert.deepEqual(out.attachments.map((a) => a.target), ['vdb']);
    const rm1 = await cli('hotremove');
    assert.equal(rm1.code, 0, rm1.stderr);
    assert.match(rm1.stdout, /the export of \S+ stays \(vircpt export started it; vircpt release ends it\)/);
    assert.equal(await vm.jobType(), 'Unbounded');
    assert.equal((await cli('release')).code, 0);
    assert.deepEqual(await leftoversOf(vm.name), []);
  });

  it('virtio-blk on a paused guest never lets go: hotremove keeps the export and says so; --force releases', async (t) => {
    t.after(undo());
    const r = await cli('hotadd', '--name', 'base', '--to', scanner.name, '-i', 'vdb', '--bus', 'virtio', '--json');
    assert.equal(r.code, 0, r.stderr);
    const [a] = (JSON.parse(r.stdout) as { attachments: Attachment[] }).attachments;
    assert.equal(a?.scannerTarget, 'vda');
    assert.match(a?.address ?? '', /^pci 0000:0\d:00\.0$/);
    const expected = path.join(tmp, 'vdb.expected');
    const seen = path.join(tmp, 'vdb.scanner');
    await imageToRaw(vm.image('vdb'), expected);
    await readThroughScanner(scanner.name, a.alias, sockDir, seen);
    assert.ok(await sameBytes(seen, expected));

    const stuck = await cli('hotremove', '--wait', '1');
    assert.equal(stuck.code, 1);
    assert.equal(errorLines(stuck.stderr).length, 1, stuck.stderr);
    assert.match(stuck.stderr, new RegExp(`the guest of ${scanner.name} vda \\(vdb\\) did not let go within 1 s; the export and its record stay`));
    assert.equal(await vm.jobType(), 'Unbounded', 'the export still runs');
    const info = await cli('info', '--json');
    assert.equal((JSON.parse(info.stdout) as { attachments: Attachment[] }).attachments[0]?.alias, a.alias);
    const rel = await cli('release');
    assert.equal(rel.code, 1);
    assert.match(rel.stderr, new RegExp(`attached to ${scanner.name} \\(vdb as vda\\)`));

    const forced = await cli('hotremove', '--wait', '0', '--force');
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(forced.stderr, new RegExp(`${scanner.name} still lists vda: released anyway`));
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual(await leftoversOf(vm.name), []);
  });
});
