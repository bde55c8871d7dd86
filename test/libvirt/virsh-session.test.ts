// The long-lived virsh shell (session mode) must answer exactly as one virsh process per call
// does: same output, same errors and codes, whatever the arguments hold; and it must leave no
// shell behind when closed.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lab, LAB_URI, virsh as labVirsh, type LabVm } from '../lab/lab.js';
import { VircptError } from '../../src/errors.js';
import { Virsh } from '../../src/libvirt/virsh.js';

const MiB = 1024 * 1024;

/** PIDs of this process's virsh children that are still running (not zombies). */
async function virshChildren(): Promise<number[]> {
  const out: number[] = [];
  for (const pid of await readdir('/proc').catch(() => [])) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    const m = /^\d+ \((.*)\) (\S) (\d+)/.exec(stat);
    if (m && m[1] === 'virsh' && m[2] !== 'Z' && Number(m[3]) === process.pid) out.push(Number(pid));
  }
  return out;
}

async function failure(p: Promise<unknown>): Promise<VircptError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof VircptError, `not a VircptError: ${String(err)}`);
    return err;
  }
  assert.fail('expected a failure');
}

describe('virsh session mode', () => {
  const lab = new Lab('session');
  let vm: LabVm;
  const session = new Virsh({ uri: LAB_URI, session: true });
  const oneShot = new Virsh({ uri: LAB_URI });

  before(async () => {
    vm = await lab.vm({ disks: [{ target: 'vda', size: 64 * MiB }] });
    await labVirsh('checkpoint-create-as', vm.name, 'c0');
  });
  after(async () => {
    session.close();
    await lab.cleanup();
  });

  it('answers every query as a virsh process does', async () => {
    const queries = [
      ['list', '--all', '--name'],
      ['list', '--name'],
      ['domstate', '--', vm.name],
      ['dumpxml', '--', vm.name],
      ['domblkinfo', '--all', '--', vm.name],
      ['domjobinfo', '--', vm.name],
      ['checkpoint-list', '--name', '--topological', '--', vm.name],
      ['checkpoint-dumpxml', '--no-domain', '--', vm.name, 'c0'],
    ];
    // Other test files define and destroy domains meanwhile: listings are compared on ours.
    const ours = (q: string[], out: string) => (q[0] === 'list' ? out.split('\n').filter((l) => l === vm.name).join('\n') : out.trimEnd());
    for (const q of queries) {
      const [a, b] = await Promise.all([session.run(q), oneShot.run(q)]);
      assert.equal(ours(q, a), ours(q, b), `virsh ${q.join(' ')}`);
      if (q[0] === 'list') assert.equal(ours(q, a), vm.name, `virsh ${q.join(' ')} lists the test's domain`);
      assert.ok(a.length > 0, `virsh ${q.join(' ')} printed something`);
    }
  });

  it('answers as a virsh process does for a name wider than the screen, or holding a tab', async () => {
    // In the C locale readline counts each byte of a UTF-8 name as four columns and breaks the
    // echo of a long line with carriage returns; a tab typed into it asks for completion.
    const wide = await lab.vm({ start: false, name: (p) => `${p} 'q"&\\%2f\tünïcødé ${'x'.repeat(120)}`, disks: [{ target: 'vda', size: MiB }] });
    for (const q of [['domstate', '--', wide.name], ['dumpxml', '--', wide.name], ['checkpoint-list', '--name', '--', wide.name]]) {
      assert.equal(await session.run(q), await oneShot.run(q), `virsh ${q[0]!}`);
    }
    assert.equal((await session.run(['domstate', '--', wide.name])).trim(), 'shut off');
  });

  it('fails as a virsh process does, with libvirt words and the same code', async () => {
    const odd = `no such ' "dom" ; echo x \\ $HOME`;
    const cases = [
      ['domstate', '--', odd],
      ['checkpoint-dumpxml', '--no-domain', '--', vm.name, 'nope'],
      ['backup-dumpxml', '--', vm.name],
    ];
    for (const q of cases) {
      const [a, b] = [await failure(session.run(q)), await failure(oneShot.run(q))];
      assert.equal(a.code, b.code, `virsh ${q.join(' ')}`);
      assert.equal(a.message, b.message);
    }
    // The odd name reached libvirt whole: no quote or separator was interpreted on the way.
    assert.match((await failure(session.run(['domstate', '--', odd]))).message, new RegExp(`'${odd.replace(/[\\$"^.*+?()[\]{}|]/g, '\\$&')}'`));
  });

  it('runs concurrent queries on at most three shells, and close() ends them', async () => {
    const answers = await Promise.all(Array.from({ length: 24 }, (_, i) =>
      session.run(i % 2 ? ['domstate', '--', vm.name] : ['checkpoint-list', '--name', '--', vm.name])));
    answers.forEach((a, i) => assert.equal(a.trim(), i % 2 ? 'paused' : 'c0'));
    const shells = await virshChildren();
    assert.ok(shells.length >= 1 && shells.length <= 3, `${shells.length} virsh shells`);
    session.close();
    for (let i = 0; i < 50 && (await virshChildren()).length > 0; i++) await sleep(100);
    assert.deepEqual(await virshChildren(), []);
    // A query after close() opens a fresh shell, and that one ends with close() too.
    assert.equal((await session.run(['domstate', '--', vm.name])).trim(), 'paused');
    session.close();
    for (let i = 0; i < 50 && (await virshChildren()).length > 0; i++) await sleep(100);
    assert.deepEqual(await virshChildren(), []);
  });
});
