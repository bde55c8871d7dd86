// Starting and ending a backup job when libvirt's answer is lost: the job may or may not have
// started (or ended), and vircptfs must find out instead of guessing. The libvirt side is real
// (a lab VM, real backup jobs); only the lost answer is faked, since a timeout that strikes
// exactly after libvirt acted cannot be produced on purpose: LostAnswerVirsh runs the real call,
// then reports a timeout (or, for a query, an unreachable libvirt) as if the answer never came.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { VircptError } from '../../src/errors.js';
import { startBackupExport, stopBackupExport } from '../../src/exports/backup-export.js';
import type { ExportRecord } from '../../src/exports/export.js';
import { defaultRuntimeDirs, Instance } from '../../src/exports/runtime.js';
import { blockInfo, getDomain } from '../../src/libvirt/domain.js';
import { Virsh, type CallOptions } from '../../src/libvirt/virsh.js';
import { silentLogger } from '../silent-logger.js';
import { Lab, LAB_URI, virsh as labVirsh, type LabVm } from '../lab/lab.js';
import { leftoversOf } from '../lab/leftovers.js';

const MiB = 1024 * 1024;

/** A fake: the named commands run for real, then fail as if their answer was lost; or, with
 *  'shell-lost', fail unsent when they would go through a shell (CallOptions.checkable), as a
 *  shell whose libvirtd went away does. */
class LostAnswerVirsh extends Virsh {
  constructor(readonly lost: Map<string, 'timeout' | 'unreachable' | 'shell-lost'>) {
    super({ uri: LAB_URI });
  }

  override async run(args: string[], opts?: CallOptions): Promise<string> {
    const how = this.lost.get(args[0] ?? '');
    if (how === 'unreachable') throw new VircptError('LIBVIRT', 'Failed to connect socket to libvirt (fake)');
    if (how === 'shell-lost' && opts?.checkable) {
      throw new VircptError('LIBVIRT', `virsh ${args[0]}: the virsh shell lost its connection to libvirt; outcome unknown (fake)`);
    }
    const out = await super.run(args, opts);
    if (how === 'timeout') throw new VircptError('TIMEOUT', `virsh ${args[0]} timed out after 0 ms (fake)`);
    return out;
  }
}

describe('backup-begin and domjobabort whose answer is lost', () => {
  const lab = new Lab('mutate');
  const real = new Virsh({ uri: LAB_URI });
  const log = silentLogger();
  const instance = Instance.of('cli', defaultRuntimeDirs());
  let vm: LabVm;

  before(async () => {
    vm = await lab.vm({ disks: [{ target: 'vda', size: 16 * MiB }] });
    await labVirsh('checkpoint-create-as', vm.name, 'm1');
  });
  after(() => lab.cleanup());

  async function start(virsh: Virsh): Promise<ExportRecord> {
    const [domain, sizes] = await Promise.all([getDomain(real, vm.name), blockInfo(real, vm.name)]);
    return startBackupExport({ virsh, instance, log, domain, sizes, checkpoint: 'm1', targets: ['vda'], freeze: false });
  }

  async function assertReleased(): Promise<void> {
    assert.equal(await vm.jobType(), 'None', 'no job');
    assert.deepEqual(await leftoversOf(vm.name), [], 'no record, socket or scratch folder');
  }

  it('a backup-begin that timed out after libvirt started the job: the job is ours and is used', async () => {
    const rec = await start(new LostAnswerVirsh(new Map([['backup-begin', 'timeout']])));
    try {
      assert.equal(await vm.jobType(), 'Unbounded');
      const job = await real.run(['backup-dumpxml', '--', vm.name]);
      assert.ok(job.includes(rec.disks[0]!.socket), 'the running job is the one the record names');
    } finally {
      await stopBackupExport(real, instance, rec, log);
    }
    await assertReleased();
  });

  it('a backup-begin whose outcome nobody could learn: the record stays, and the next start ends that job first', async () => {
    const lost = new LostAnswerVirsh(new Map<string, 'timeout' | 'unreachable'>([['backup-begin', 'timeout'], ['backup-dumpxml', 'unreachable']]));
    await assert.rejects(start(lost), (err: VircptError) => err.code === 'TIMEOUT');
    assert.equal(await vm.jobType(), 'Unbounded', 'libvirt did start it');
    assert.notDeepEqual(await leftoversOf(vm.name), [], 'the record stays, naming the job');
    const rec = await start(real);
    await stopBackupExport(real, instance, rec, log);
    await assertReleased();
  });

  it('a domjobabort that timed out after libvirt ended the job: the release still succeeds', async () => {
    const rec = await start(real);
    await stopBackupExport(new LostAnswerVirsh(new Map([['domjobabort', 'timeout']])), instance, rec, log);
    await assertReleased();
  });

  it('a domjobabort through the shell that never reached libvirt: asked again, then a process ends the job', async () => {
    const rec = await start(real);
    await stopBackupExport(new LostAnswerVirsh(new Map([['domjobabort', 'shell-lost']])), instance, rec, log);
    await assertReleased();
  });

  it('a domjobabort that failed while the job still runs: the release fails and keeps the record', async () => {
    const rec = await start(real);
    try {
      await assert.rejects(stopBackupExport(new LostAnswerVirsh(new Map([['domjobabort', 'unreachable']])), instance, rec, log),
        (err: VircptError) => err.code === 'LIBVIRT');
      assert.equal(await vm.jobType(), 'Unbounded');
      assert.notDeepEqual(await leftoversOf(vm.name), [], 'the record stays for a later release');
    } finally {
      await stopBackupExport(real, instance, rec, log);
    }
    await assertReleased();
  });
});
