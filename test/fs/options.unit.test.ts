// vircptfs's command line (src/fs/options.ts), imported directly: no root, no libvirt.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import { DEFAULT_SCRATCH_RESERVE } from '../../src/exports/scratch-guard.js';
import { DEFAULTS, parseFsArgs, parseReserve, parseSize, sourceUri } from '../../src/fs/options.js';

const usageError = (message: RegExp) => (err: unknown) => isVircptError(err) && err.code === 'USAGE' && message.test(err.message);

test('parseFsArgs: defaults, flags before or after, -o joined or apart, options repeatable', () => {
  const o = parseFsArgs(['qemu:///system', '/mnt/x']);
  assert.deepEqual({ ...o }, {
    source: 'qemu:///system', mountpoint: '/mnt/x', foreground: false, debug: false, domains: [],
    cacheBytes: DEFAULTS.cacheBytes, idleSeconds: DEFAULTS.idleSeconds, scratch: undefined,
    scratchReserve: DEFAULT_SCRATCH_RESERVE, scratchBudget: 0, remote: {}, freeze: true, allowOther: false, uid: undefined, gid: undefined,
    umask: DEFAULTS.umask, pageCache: 'auto', readaheadKb: DEFAULTS.readaheadKb, logFile: undefined,
  });
  const p = parseFsArgs(['-o', 'domain=a,cache=1G', 'default', '-d', '/m', '-odomain=b,idle=5,nofreeze',
    '-o', 'scratch=/s,scratch_reserve=5%,readahead=4096,log=/l,allow_other,uid=0,gid=0,umask=027,direct_io']);
  assert.equal(p.source, 'default');
  assert.equal(p.mountpoint, '/m');
  assert.equal(p.debug && p.foreground, true, '-d implies -f');
  assert.deepEqual(p.domains, ['a', 'b']);
  assert.equal(p.cacheBytes, 2 ** 30);
  assert.equal(p.idleSeconds, 5);
  assert.equal(p.freeze, false);
  assert.equal(p.scratch, '/s');
  assert.deepEqual(p.scratchReserve, { percent: 5 });
  assert.equal(p.readaheadKb, 4096);
  assert.equal(p.logFile, '/l');
  assert.equal(p.allowOther && p.pageCache === 'never', true);
  assert.deepEqual([p.uid, p.gid, p.umask], [0, 0, 0o027]);
});

test('parseFsArgs: page_cache= takes auto, always or never; direct_io is never', () => {
  for (const p of ['auto', 'always', 'never'] as const) assert.equal(parseFsArgs(['-o', `page_cache=${p}`, 'a', 'b']).pageCache, p);
  assert.equal(parseFsArgs(['-o', 'direct_io', 'a', 'b']).pageCache, 'never');
  assert.equal(parseFsArgs(['-o', 'direct_io,page_cache=always', 'a', 'b']).pageCache, 'always', 'the last one wins');
});

test('parseFsArgs: bad input is one usage error naming what was wrong', () => {
  const cases: Array<[string[], RegExp]> = [
    [['-o', 'bogus', 'a', 'b'], /unknown option: bogus/],
    [['-o', 'domain=', 'a', 'b'], /domain needs a value/],
    [['-o', 'cache=1M', 'a', 'b'], /cache=1M: at least 16M/],
    [['-o', 'cache=lots', 'a', 'b'], /cache=lots: not a size/],
    [['-o', 'idle=-1', 'a', 'b'], /idle=-1: not a whole number/],
    [['-o', 'idle=86401', 'a', 'b'], /up to 86400/],
    [['-o', 'scratch_reserve=100%', 'a', 'b'], /a percentage below 100/],
    [['-o', 'umask=0800', 'a', 'b'], /umask=0800: not an octal mode/],
    [['-o', 'page_cache=sometimes', 'a', 'b'], /page_cache=sometimes: one of auto, always, never/],
    [['-o', 'uid=4294967295', 'a', 'b'], /uid=4294967295: not a whole number/],
    [['-x', 'a', 'b'], /unknown flag: -x/],
    [['-o'], /-o needs a list/],
    [['a'], /expected SOURCE and MOUNTPOINT, got 1/],
    [['a', 'b', 'c'], /got 3/],
  ];
  for (const [argv, message] of cases) assert.throws(() => parseFsArgs(argv), usageError(message), argv.join(' '));
});

test('parseSize and parseReserve: units, fractions, percentages, 0 turns the guard off', () => {
  assert.equal(parseSize('256M', 'cache'), 256 * 2 ** 20);
  assert.equal(parseSize('1.5G', 'cache'), 1.5 * 2 ** 30);
  assert.equal(parseSize('2KiB', 'cache'), 2048);
  assert.equal(parseSize('4096', 'cache'), 4096);
  assert.deepEqual(parseReserve('0', 'r'), { bytes: 0 });
  assert.deepEqual(parseReserve('2.5%', 'r'), { percent: 2.5 });
  assert.throws(() => parseReserve('lots', 'scratch_reserve'), usageError(/scratch_reserve=lots: not a size .* or a percentage/));
});

test('sourceUri: a libvirt URI, or default; anything else is a usage error', () => {
  assert.equal(sourceUri('default', 'qemu:///session'), 'qemu:///session');
  assert.equal(sourceUri('qemu+ssh://h/system', 'x'), 'qemu+ssh://h/system');
  assert.throws(() => sourceUri('/mnt/x', 'x'), usageError(/SOURCE \/mnt\/x: not a libvirt URI/));
});
