// The soak in one minute (npm run soak runs it for ten): 8 readers over 2 domains x 2 disks,
// random offsets and sizes, every byte checked against the content each export's point in time
// must have; exports released and started again, with guest writes between them. Then the
// daemon's figures: RSS and libuv resources flat (last third within 10% of the first, resources
// with the slack of figures.ts: virsh shells come and go), RSS within the
// cache + 150 MiB, and the bytes read per CPU-second of the daemon not collapsing (the last
// third at least half the first: a minute of phases and page-cache hits is too short to ask for
// 10%; wall-time throughput is printed, not asserted: other load on the machine moves it);
// nothing left after the unmount. Serial: it keeps both CPUs busy for a minute.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { flatness, formatFlat, resourcesFlat } from '../soak/figures.js';
import { runSoak } from '../soak/soak.js';

describe('soak (60 s)', () => {
  it('reads every byte right across exports and guest writes, and the daemon stays flat', async () => {
    const r = await runSoak({ durationMs: 60_000, intervalMs: 10_000, print: (l) => console.log(l) });
    console.log(`${(r.bytesVerified / 2 ** 20).toFixed(0)} MiB verified in ${r.reads} reads, ${r.exports} exports, ${r.guestWrites} guest writes`);
    assert.ok(r.samples.length >= 5, `${r.samples.length} samples`);
    assert.ok(r.exports >= 8, `exports started again and again (${r.exports})`);
    assert.ok(r.guestWrites >= 4, `guest writes between exports (${r.guestWrites})`);
    assert.ok(r.bytesVerified > 0 && r.samples.every((s) => s.mbPerS > 0), 'every interval read bytes');
    const rss = flatness(r.samples.map((s) => s.rssMiB));
    const res = flatness(r.samples.map((s) => s.resources));
    const tput = flatness(r.samples.map((s) => s.mbPerS));
    const perCpu = flatness(r.samples.map((s) => s.mbPerCpuS));
    for (const [name, f, unit] of [['RSS', rss, ' MiB'], ['libuv resources', res, ''], ['throughput', tput, ' MB/s'],
      ['throughput per daemon CPU-second', perCpu, ' MB']] as const) {
      console.log(formatFlat(name, f, unit));
    }
    assert.ok(rss.last <= rss.first * 1.1, `daemon RSS grew: ${formatFlat('RSS', rss, ' MiB')}`);
    assert.ok(resourcesFlat(res), `libuv resources grew: ${formatFlat('resources', res, '')}`);
    assert.ok(perCpu.ratio >= 0.5, `the daemon's work per byte grew: ${formatFlat('MB per CPU-second', perCpu, ' MB')}`);
    const peak = Math.max(...r.samples.map((s) => s.rssMiB));
    assert.ok(peak <= r.cacheMiB + 150, `daemon RSS ${peak.toFixed(1)} MiB > cache ${r.cacheMiB} MiB + 150 MiB`);
    assert.deepEqual(r.exit, { code: 0, signal: null });
    assert.deepEqual(r.leftovers, [], 'nothing left behind');
  });
});
