// npm run soak [-- MINUTES]: the soak for minutes (default 10), one line of figures per minute,
// then whether throughput, the daemon's RSS and its libuv resources stayed flat (the last third
// within 10% of the first) and RSS within the cache + 150 MiB. Throughput is printed per second
// of wall time and per CPU-second of the daemon; the verdict takes the second, which the other
// load of a shared machine does not move. Exits 1 on a wrong byte, a leftover or a figure that
// is not flat.
import { flatness, formatFlat, RESOURCE_SLACK, resourcesFlat } from './figures.js';
import { runSoak } from './soak.js';

const minutes = Number(process.argv[2] ?? process.env.SOAK_MINUTES ?? 10);
if (!(minutes >= 3)) {
  console.error(`soak: MINUTES must be 3 or more (three thirds of at least a minute each), not ${process.argv[2]}`);
  process.exit(2);
}
console.log(`# soak: ${minutes} minutes, 8 readers over 2 domains x 2 disks, idle=1, guest writes between exports`);
const r = await runSoak({ durationMs: minutes * 60_000, intervalMs: 60_000, print: (l) => console.log(`# ${l}`) });
const tput = flatness(r.samples.map((x) => x.mbPerS));
const perCpu = flatness(r.samples.map((x) => x.mbPerCpuS));
const rss = flatness(r.samples.map((x) => x.rssMiB));
const res = flatness(r.samples.map((x) => x.resources));
const maxRss = Math.max(...r.samples.map((x) => x.rssMiB));
const rssBound = r.cacheMiB + 150;
console.log(`# ${(r.bytesVerified / 2 ** 30).toFixed(2)} GiB in ${r.reads} reads, every byte checked; ${r.exports} exports, ${r.guestWrites} guest writes between them`);
console.log(`# ${formatFlat('throughput', tput, ' MB/s')} (wall time: the machine's other load moves it)`);
console.log(`# ${formatFlat('throughput per daemon CPU-second', perCpu, ' MB')}`);
console.log(`# ${formatFlat('daemon RSS', rss, ' MiB')}; peak ${maxRss.toFixed(1)} MiB, bound cache + 150 = ${rssBound} MiB: ${maxRss <= rssBound ? 'within' : 'OVER'}`);
console.log(`# ${formatFlat('libuv resources', res, '')}; within 10% + ${RESOURCE_SLACK}: ${resourcesFlat(res) ? 'yes' : 'NO'}`);
console.log(`# unmount: exit ${JSON.stringify(r.exit)}; left behind: ${r.leftovers.length === 0 ? 'nothing' : r.leftovers.join(' ')}`);
const ok = perCpu.flat && rss.flat && resourcesFlat(res) && maxRss <= rssBound && r.leftovers.length === 0 && r.exit.code === 0;
process.exit(ok ? 0 : 1);
