// The scratch guard's inputs, without libvirt: `domjobinfo --rawstats` as libvirt 9.0 prints it
// (captured from a pull-mode backup), and the reserve option.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseJobStats, JOB_OPERATION_BACKUP } from '../../src/libvirt/job-stats.js';
import { guardOff, reserveBytes } from '../../src/exports/scratch-guard.js';
import { parseFsArgs, parseReserve } from '../../src/fs/options.js';

const MiB = 2 ** 20;

test('domjobinfo --rawstats of a pull-mode backup: scratch used and total, in bytes', () => {
  const out = '\nJob type: 2\n\noperation: 9\ntime_elapsed: 2876\ndisk_temp_used: 4194304\ndisk_temp_total: 67108864\n\n';
  assert.deepEqual(parseJobStats(out), { running: true, operation: JOB_OPERATION_BACKUP, tempUsed: 4 * MiB, tempTotal: 64 * MiB });
});

test('domjobinfo --rawstats without a job: not running, no figures', () => {
  assert.deepEqual(parseJobStats('\nJob type: 0\n\n'), { running: false, operation: undefined, tempUsed: undefined, tempTotal: undefined });
  assert.equal(parseJobStats('Job type: 3\n').running, false, 'completed');
  assert.equal(parseJobStats('Job type: 1\n').running, true, 'bounded');
});

test('scratch_reserve: a size, a percentage of the filesystem, 0 for off; bad values are one clear line', () => {
  assert.deepEqual(parseReserve('512M', 'scratch_reserve'), { bytes: 512 * MiB });
  assert.deepEqual(parseReserve('5%', 'scratch_reserve'), { percent: 5 });
  assert.equal(reserveBytes({ percent: 5 }, 1000 * MiB), 50 * MiB);
  assert.equal(reserveBytes({ bytes: 7 }, 1000 * MiB), 7);
  assert.ok(guardOff(parseReserve('0', 'x')) && guardOff(parseReserve('0%', 'x')));
  assert.ok(!guardOff(parseReserve('1K', 'x')));
  assert.throws(() => parseReserve('lots', 'scratch_reserve'), { message: 'scratch_reserve=lots: not a size (like 1G or 512M) or a percentage (like 5%)' });
  assert.throws(() => parseReserve('100%', 'scratch_reserve'), /a percentage below 100/);
  assert.deepEqual(parseFsArgs(['-o', 'scratch_reserve=2G', 'default', '/mnt']).scratchReserve, { bytes: 2 * 1024 * MiB });
  assert.deepEqual(parseFsArgs(['default', '/mnt']).scratchReserve, { bytes: 1024 * MiB }, 'default 1G');
});
