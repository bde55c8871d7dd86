// vircpt create / list / delete against a real libvirtd and a paused TCG lab VM.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Lab, LAB_URI, type LabVm } from '../lab/lab.js';
import { errorLines, vircpt } from '../lab/cli.js';
import { runVircpt } from '../../src/cli/vircpt.js';
import { defaultRuntimeDirs } from '../../src/exports/runtime.js';
import { lazyLogger } from '../../src/log.js';

/** PIDs of this process's virsh children that still run (not zombies). */
async function virshChildren(): Promise<number[]> {
  const found: number[] = [];
  for (const pid of await readdir('/proc').catch(() => [])) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    const m = /^\d+ \((.*)\) (\S) (\d+)/.exec(stat);
    if (m && m[1] === 'virsh' && m[2] !== 'Z' && Number(m[3]) === process.pid) found.push(Number(pid));
  }
  return found;
}

const MiB = 1024 * 1024;

describe('vircpt checkpoints', () => {
  const lab = new Lab('cpts');
  let vm: LabVm;
  const cli = (...args: string[]) => vircpt(['-d', vm.name, ...args]);

  before(async () => {
    vm = await lab.vm({
      disks: [
        { target: 'sda', bus: 'sata', size: 64 * MiB },
        { target: 'vdb', size: 32 * MiB },
        { target: 'vdc', size: 8 * MiB, format: 'raw' },
      ],
    });
  });
  after(() => lab.cleanup());

  it('creates a checkpoint on the qcow2 disks, warns about the raw one and the missing agent', async () => {
    const r = await cli('create', '--name', 'c1');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /disk vdc is raw.*excluded/);
    assert.match(r.stderr, /guest agent not reachable/);
    const list = JSON.parse((await cli('list', '--json')).stdout) as { name: string; parent: string | null; disks: string[] }[];
    assert.deepEqual(list.map((c) => [c.name, c.parent, c.disks]), [['c1', null, ['sda', 'vdb']]]);
    assert.deepEqual(await vm.bitmaps('sda'), ['c1']);
    assert.deepEqual(await vm.bitmaps('vdb'), ['c1']);
  });

  it('refuses a duplicate name with one line naming domain and checkpoint', async () => {
    const r = await cli('create', '--name', 'c1');
    assert.equal(r.code, 1);
    const errs = errorLines(r.stderr);
    assert.equal(errs.length, 1, r.stderr);
    assert.match(errs[0]!, new RegExp(`domain ${vm.name} already has a checkpoint c1`));
  });

  it('lists children with their parent, as a table and as JSON', async () => {
    assert.equal((await cli('-i', 'sda', 'create', '--name', 'c2')).code, 0);
    const list = JSON.parse((await cli('list', '--json')).stdout) as { name: string; parent: string | null; disks: string[] }[];
    assert.deepEqual(list.map((c) => [c.name, c.parent, c.disks]), [['c1', null, ['sda', 'vdb']], ['c2', 'c1', ['sda']]]);
    const table = (await cli('list')).stdout.trim().split('\n');
    assert.match(table[0]!, /^NAME\s+PARENT\s+CREATED\s+DISKS$/);
    assert.match(table[2]!, /^c2\s+c1\s+\d{4}-\d\d-\d\dT.*\s+sda$/);
  });

  it('deletes by merging (bitmap gone) and by metadata only (bitmap kept)', async () => {
    assert.equal((await cli('delete', '--name', 'c2')).code, 0);
    assert.deepEqual(await vm.bitmaps('sda'), ['c1']);
    const r = await cli('delete', '--name', 'c1', '--metadata');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /metadata only/);
    assert.equal((await cli('list', '--json')).stdout.trim(), '[]');
    assert.deepEqual(await vm.bitmaps('sda'), ['c1'], 'metadata-only delete keeps the bitmap');
  });

  it('reports an unknown domain, an unknown checkpoint and an unknown disk in one line (exit 1)', async () => {
    const nodom = await vircpt(['-d', `${vm.name}-nosuch`, 'list']);
    assert.equal(nodom.code, 1);
    assert.match(nodom.stderr, /domain .*-nosuch.*failed to get domain/);
    const nocp = await cli('delete', '--name', 'nosuch');
    assert.equal(nocp.code, 1);
    assert.equal(errorLines(nocp.stderr).length, 1);
    assert.match(nocp.stderr, new RegExp(`domain ${vm.name} has no checkpoint nosuch`));
    const nodisk = await cli('-i', 'sdz', 'create', '--name', 'c3');
    assert.equal(nodisk.code, 1);
    assert.match(nodisk.stderr, /has no disk sdz \(disks: sda, vdb, vdc\)/);
  });

  it('prints its version; -v logs each virsh call with its arguments and duration', async () => {
    const pkg = JSON.parse(await readFile(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const v = await vircpt([flag]);
      assert.equal(v.code, 0, v.stderr);
      assert.equal(v.stdout, `vircpt ${pkg.version}`);
    }
    const r = await cli('-v', 'list');
    assert.equal(r.code, 0, r.stderr);
    // The queries of a command go through its one virsh shell (src/cli/context.ts).
    assert.match(r.stderr, new RegExp(`^vircpt: debug: virsh args="checkpoint-list --name --topological -- ${vm.name}" ms=\\d+ ok=true session=true$`, 'm'));
  });

  it('leaves no virsh shell running once a command returns, also after a failure', async () => {
    const out: string[] = [];
    const deps = {
      version: '0', log: lazyLogger({ level: 'silent' }), dirs: defaultRuntimeDirs(), isTTY: false,
      stdout: (s: string) => out.push(s), stderr: (s: string) => out.push(s), signal: new AbortController().signal,
    };
    assert.equal(await runVircpt(['-U', LAB_URI, '-d', vm.name, 'list', '--json'], deps), 0, out.join(''));
    assert.ok(Array.isArray(JSON.parse(out.join(''))), 'a JSON list');
    assert.equal(await runVircpt(['-U', LAB_URI, '-d', `${vm.name}-nosuch`, 'list'], deps), 1);
    // Closing a shell ends its standard input; virsh exits on its own right after.
    const deadline = Date.now() + 10_000;
    while ((await virshChildren()).length > 0 && Date.now() < deadline) await sleep(20);
    assert.deepEqual(await virshChildren(), [], 'virsh children of this process');
  });

  it('exits 2 on usage errors', async () => {
    assert.equal((await cli('create')).code, 2);
    assert.equal((await vircpt(['list'])).code, 2, 'no domain');
    assert.equal((await cli('frobnicate')).code, 2);
  });
});
