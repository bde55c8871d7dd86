// `vircpt release` also ends an export of ours whose owner is no longer running (a mount killed,
// or one that exited while libvirt was down and whose release helper gave up), and says so.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { startBackupExport } from '../../src/exports/backup-export.js';
import { defaultRuntimeDirs, Instance, instanceId } from '../../src/exports/runtime.js';
import { blockInfo, getDomain } from '../../src/libvirt/domain.js';
import { Virsh } from '../../src/libvirt/virsh.js';
import { silentLogger } from '../silent-logger.js';
import { vircpt } from '../lab/cli.js';
import { Lab, LAB_URI, virsh as labVirsh, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';

const MiB = 1024 * 1024;

describe('vircpt release and dead instances of ours', () => {
  const lab = new Lab('reldead');
  let vm: LabVm;

  before(async () => {
    vm = await lab.vm({ disks: [{ target: 'vda', size: 16 * MiB }] });
    await labVirsh('checkpoint-create-as', vm.name, 'd1');
  });
  after(() => lab.cleanup());

  it('ends the job and folders of an instance that is gone', async () => {
    // An instance id of a process that has exited: what a killed mount leaves behind.
    const gone = spawnSync('true').pid;
    const instance = new Instance(instanceId('fs', gone), defaultRuntimeDirs());
    const virsh = new Virsh({ uri: LAB_URI });
    const [domain, sizes] = await Promise.all([getDomain(virsh, vm.name), blockInfo(virsh, vm.name)]);
    await startBackupExport({ virsh, instance, log: silentLogger(), domain, sizes, checkpoint: 'd1', targets: ['vda'], freeze: false });
    assert.equal(await vm.jobType(), 'Unbounded');
    const r = await vircpt(['-d', vm.name, 'release']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`released the export of ${vm.name} left by instance fs-${gone}-\\d+, which is no longer running`));
    assert.equal(await vm.jobType(), 'None');
    assert.deepEqual(await leftoversOf(vm.name), []);
  });
});
