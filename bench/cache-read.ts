// node dist/bench/cache-read.js: the block cache's cost per byte, without FUSE. qemu-nbd serves
// a raw file of random bytes (in the page cache) on a Unix socket; a child process reads it
// through BlockCache + Reader as FUSE would (128 KiB reads, two in flight, one buffer each,
// reused), BENCH_PASSES times over (each pass misses: the file is larger than the cache), under
// /usr/bin/time -v. Prints wall seconds, MB/s, CPU seconds per GiB and peak RSS per run.
//
// A/B: BENCH_DISTS=dirA,dirB (each a built dist/ folder with bench/cache-read.js; default: this
// one) are run alternately, BENCH_RUNS times each. BENCH_VERIFY=1 hashes every pass and compares it
// with the file's hash. BENCH_FILE_MIB (default 1024), BENCH_CACHE_MIB (256).
// Removes all it made, also on failure.
import { spawn } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlockCache, type BlockSource } from '../src/cache/index.js';
import { NbdPool } from '../src/nbd/index.js';
import { makeTempDir, startQemuNbd } from '../test/nbd/servers.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PIECE = 128 * 1024; // libfuse 2's read size (it could not raise max_read); libfuse 3 reads up to 1 MiB
const env = process.env;
const RUNS = Number(env.BENCH_RUNS ?? 3);
const PASSES = Number(env.BENCH_PASSES ?? 4);
const FILE_BYTES = Number(env.BENCH_FILE_MIB ?? 1024) * MiB;
const CACHE_BYTES = Number(env.BENCH_CACHE_MIB ?? 256) * MiB;
const VERIFY = env.BENCH_VERIFY === '1';

interface Result { seconds: number; bytes: number; sha256: string[]; stats: object }

/** An NBD pool as the cache's BlockSource (what exports/nbd-disk.ts does, without libvirt). */
function nbdSource(pool: NbdPool, id: string): BlockSource {
  return {
    id, size: pool.size, maxRequest: pool.blockSize.maximum,
    read: async (offset, length, into, signal) => void (await pool.read(offset, length, into, signal)),
  };
}

/** The child: PASSES sequential passes, two 128 KiB reads in flight; prints a Result. */
async function subject(socketPath: string, exportName: string): Promise<void> {
  const pool = await NbdPool.connect({ socketPath, exportName, connections: 2 });
  const cache = new BlockCache({ maxBytes: CACHE_BYTES });
  const source = nbdSource(pool, 'bench');
  const sha256: string[] = [];
  const bufs = [Buffer.alloc(PIECE), Buffer.alloc(PIECE)];
  const t0 = performance.now();
  let bytes = 0;
  for (let pass = 0; pass < PASSES; pass++) {
    const reader = cache.reader(source);
    const hash = VERIFY ? createHash('sha256') : undefined;
    for (let offset = 0; offset < source.size; offset += 2 * PIECE) {
      const [a, b] = await Promise.all(bufs.map((buf, i) => reader.read(offset + i * PIECE, PIECE, buf)));
      hash?.update(bufs[0]!.subarray(0, a)).update(bufs[1]!.subarray(0, b));
      bytes += a! + b!;
    }
    await reader.close();
    if (hash) sha256.push(hash.digest('hex'));
  }
  const seconds = (performance.now() - t0) / 1000;
  await pool.close();
  const result: Result = { seconds, bytes, stats: cache.stats, sha256 };
  console.log(JSON.stringify(result));
}

interface Sample extends Result { dist: string; cpu: number; rssMiB: number }

/** Runs one subject under /usr/bin/time -v: its own figures plus CPU and peak RSS. */
async function runSubject(dist: string, socketPath: string, exportName: string): Promise<Sample> {
  const script = path.join(dist, 'bench', 'cache-read.js');
  const child = spawn('/usr/bin/time', ['-v', process.execPath, script, '--subject', socketPath, exportName],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0) throw new Error(`${script} exited ${code}: ${err}`);
  const field = (name: string): number => Number(new RegExp(`${name}: (\\S+)`).exec(err)?.[1]);
  const cpu = field('User time \\(seconds\\)') + field('System time \\(seconds\\)');
  return { ...(JSON.parse(out) as Result), dist, cpu, rssMiB: field('Maximum resident set size \\(kbytes\\)') / 1024 };
}

async function main(): Promise<void> {
  const here = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
  const dists = (env.BENCH_DISTS ?? here).split(',');
  const tmp = await makeTempDir('vircpt-cache-bench');
  let server: Awaited<ReturnType<typeof startQemuNbd>> | undefined;
  try {
    const image = path.join(tmp.path, 'disk.raw');
    const hash = createHash('sha256');
    const fh = await open(image, 'w');
    const chunk = Buffer.alloc(16 * MiB);
    for (let at = 0; at < FILE_BYTES; at += chunk.length) {
      randomFillSync(chunk);
      hash.update(chunk);
      await fh.write(chunk, 0, chunk.length, at);
    }
    await fh.close();
    const expected = hash.digest('hex');
    server = await startQemuNbd({ image, format: 'raw', exportName: 'disk' });
    console.log(`file ${FILE_BYTES / MiB} MiB x ${PASSES} passes, cache ${CACHE_BYTES / MiB} MiB, ${RUNS} runs each, verify=${VERIFY}`);
    console.log(`${'dist'.padEnd(40)} ${'seconds'.padStart(8)} ${'MB/s'.padStart(7)} ${'CPU s/GiB'.padStart(10)} ${'RSS MiB'.padStart(8)}`);
    for (let run = 0; run < RUNS; run++) {
      for (const dist of dists) {
        const s = await runSubject(dist, server.socketPath!, server.exportName);
        if (s.bytes !== FILE_BYTES * PASSES) throw new Error(`${dist}: read ${s.bytes} bytes`);
        if (VERIFY && (s.sha256.length !== PASSES || s.sha256.some((h) => h !== expected))) throw new Error(`${dist}: bytes differ from the file`);
        console.log(`${dist.padEnd(40)} ${s.seconds.toFixed(2).padStart(8)} ${(s.bytes / s.seconds / 1e6).toFixed(0).padStart(7)} ` +
          `${(s.cpu / (s.bytes / GiB)).toFixed(2).padStart(10)} ${s.rssMiB.toFixed(0).padStart(8)}`);
        if (env.BENCH_STATS === '1') console.log(JSON.stringify(s.stats));
      }
    }
  } finally {
    await server?.stop();
    await tmp.remove();
  }
}

if (process.argv[2] === '--subject') await subject(process.argv[3]!, process.argv[4]!);
else await main();
