// The FUSE addon (native/) through src/fs/fuse/, on real mounts under /tmp: libuv handles that
// must not grow with load, the loop-exit report, per-open direct_io, option checks, unmount, errno.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { isVircptError } from '../../src/errors.js';
import { mountFuse, readMountinfo, setReadAhead, type FuseOperations } from '../../src/fs/fuse/index.js';
import { countLibuvHandles, DIR, execFileP, file, isMounted, MIB, notFound, scratchMount } from './scratch-mount.js';

const GIB = 2 ** 30;
const READERS = 16;
const ROUNDS = 2;
/** fuse-native's model (a handle per worker thread) left 500-600 handles after 2 GiB read this
 *  way; the addon has one poll handle per mount. */
const HANDLE_LIMIT = 200;

// The test file's bytes: a prime-length pseudo-random pattern, and every 4 KiB block starts
// with its own offset, so a misplaced or stale block cannot hash right.
const PATTERN = (() => {
  const p = Buffer.alloc(65521);
  for (let i = 0, x = 12345; i < p.length; i++) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; p[i] = x >>> 24; }
  return p;
})();

function fillPattern(buf: Buffer, pos: number, len: number): void {
  for (let o = 0; o < len;) {
    const phase = (pos + o) % PATTERN.length;
    o += PATTERN.copy(buf, o, phase, Math.min(PATTERN.length, phase + len - o));
  }
  for (let b = Math.ceil(pos / 4096) * 4096; b + 8 <= pos + len; b += 4096) buf.writeBigUInt64LE(BigInt(b), b - pos);
}

function md5Of(start: number, len: number): string {
  const hash = createHash('md5');
  const chunk = Buffer.alloc(MIB);
  for (let pos = start; pos < start + len; pos += MIB) {
    fillPattern(chunk, pos, MIB);
    hash.update(chunk);
  }
  return hash.digest('hex');
}

/** One file, /data, of patterned bytes, each read answered after `delay` (async like the cache). */
function patternFs(size: number, delay: () => Promise<unknown>): FuseOperations {
  return {
    getattr: async (path) => (path === '/' ? DIR : path === '/data' ? file(size) : Promise.reject(notFound(path))),
    readdir: async () => ['data'],
    open: async () => ({ fh: 1 }),
    read: async (_path, _fh, buf, len, pos) => {
      await delay();
      const n = Math.max(0, Math.min(len, size - pos));
      fillPattern(buf, pos, n);
      return n;
    },
  };
}

/** md5 of [start, start+len) of path read with O_DIRECT (every round reaches the filesystem). */
async function readRange(path: string, start: number, len: number): Promise<string> {
  const script = 'dd if="$1" bs=1M iflag=direct skip="$2" count="$3" status=none | md5sum';
  const { stdout } = await execFileP('sh', ['-c', script, 'sh', path, String(start / MIB), String(len / MIB)]);
  return stdout.split(' ')[0] ?? '';
}

test('parallel direct reads keep the libuv handle count bounded and the bytes exact', async (t) => {
  const span = GIB / READERS;
  const expected = Array.from({ length: READERS }, (_, i) => md5Of(i * span, span));
  const before = countLibuvHandles();
  const mount = await scratchMount(t, patternFs(GIB, () => sleep(1)), { readOnly: true });
  const started = process.hrtime.bigint();
  for (let round = 0; round < ROUNDS; round++) {
    const got = await Promise.all(expected.map((_, i) => readRange(`${mount.mountpoint}/data`, i * span, span)));
    assert.deepEqual(got, expected, `round ${round}: bytes read differ from the file's`);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const during = countLibuvHandles();
  await mount.unmount();
  const after = countLibuvHandles();
  t.diagnostic(`${ROUNDS} GiB, ${READERS} O_DIRECT readers, 1 ms per read: ${Math.round((ROUNDS * GIB) / 1e6 / seconds)} MB/s; ` +
    `libuv handles: ${before} before mounting, ${during} after reading, ${after} after unmounting`);
  assert.ok(during < HANDLE_LIMIT, `${during} libuv handles after reading: worker-thread handles are leaking`);
  // Unless a mount namespace copied meanwhile (a VM started by libvirt) keeps the loop going:
  if ((await mount.exited).status !== undefined) assert.ok(after <= before, `${after - before} handles left after unmounting`);
});

test('an unmount from outside (fusermount3 -u) is reported within 2 s', async (t) => {
  const mount = await scratchMount(t, patternFs(MIB, async () => {}));
  assert.equal((await readFile(`${mount.mountpoint}/data`)).length, MIB);
  const started = Date.now();
  await execFileP('fusermount3', ['-u', mount.mountpoint]);
  const exit = await Promise.race([mount.exited, sleep(2000).then(() => undefined)]);
  assert.ok(exit, 'the end of the FUSE loop was not reported within 2 s');
  t.diagnostic(`reported after ${Date.now() - started} ms, fuse_loop_mt status ${exit.status}`);
  assert.equal(exit.external, true);
  assert.equal(await isMounted(mount.mountpoint), false);
  await mount.unmount(); // nothing left to do, and no error
});

test('an unmount here is reported even while another mount namespace keeps the mount', async (t) => {
  const mount = await scratchMount(t, patternFs(MIB, async () => {}));
  // What libvirt does for every QEMU it starts: a private copy of all mounts.
  const holder = spawn('unshare', ['--mount', '--propagation', 'private', 'sleep', '60'], { stdio: 'ignore' });
  t.after(() => { holder.kill(); });
  for (let i = 0; !(await readFile(`/proc/${holder.pid}/mountinfo`, 'utf8').catch(() => '')).includes(mount.mountpoint); i++) {
    assert.ok(i < 100, 'the unshared process never showed the mount');
    await sleep(20);
  }
  await execFileP('fusermount3', ['-u', mount.mountpoint]);
  const exit = await Promise.race([mount.exited, sleep(2000).then(() => undefined)]);
  assert.ok(exit, 'the unmount was not reported within 2 s');
  assert.deepEqual(exit, { status: undefined, external: true }, 'reported as gone here while its loop goes on');
});

test('open returning direct_io lets cat read a file whose getattr size is 0 completely', async (t) => {
  const extents = Array.from({ length: 20_000 }, (_, i) => ({ offset: i * 65_536, length: 65_536, dirty: i % 3 === 0 }));
  const content = Buffer.from(JSON.stringify({ extents }));
  const mount = await scratchMount(t, {
    getattr: async (path) => (path === '/' ? DIR : ['/dirty-map.json', '/cached.json'].includes(path) ? file(0) : Promise.reject(notFound(path))),
    readdir: async () => ['dirty-map.json', 'cached.json'],
    open: async (path) => ({ fh: 1, directIo: path === '/dirty-map.json' }),
    read: async (_path, _fh, buf, len, pos) => content.copy(buf, 0, Math.min(pos, content.length), Math.min(pos + len, content.length)),
  });
  const cat = (name: string) => execFileP('cat', [`${mount.mountpoint}/${name}`], { encoding: 'buffer', maxBuffer: 64 * MIB });
  const { stdout } = await cat('dirty-map.json');
  assert.equal(stdout.length, content.length);
  assert.ok(stdout.equals(content), 'cat returned other bytes than the file has');
  // The same file through the page cache stops at the size getattr gave: why the flag exists.
  assert.equal((await cat('cached.json')).stdout.length, 0);
});

test('options reach the mount; options libfuse 3 does not take are refused before mounting', async (t) => {
  const ops = patternFs(MIB, async () => {});
  const owned: FuseOperations = { ...ops, getattr: async (p, ctx) => ({ ...(await ops.getattr(p, ctx)), uid: 4242, gid: 4242 }) };
  const fsname = 'qemu+ssh://root@host/system?keyfile=/k&no_verify=1';
  const mount = await scratchMount(t, owned, { readOnly: true, fsname, subtype: 'vircptfs' });
  const entry = (await readMountinfo()).find((m) => m.mountpoint === mount.mountpoint);
  assert.equal(entry?.fstype, 'fuse.vircptfs');
  assert.equal(entry.source, fsname);
  const line = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.includes(` ${mount.mountpoint} `));
  assert.match(line ?? '', /^\S+ \S+ \S+ \S+ \S+ ro[, ]/, 'mounted read-only');
  assert.equal((await execFileP('stat', ['-c', '%u:%g', `${mount.mountpoint}/data`])).stdout.trim(), '4242:4242', 'owner as getattr says');
  await setReadAhead(mount.mountpoint, 1024);
  assert.equal((await readFile(`/sys/class/bdi/${entry?.devId}/read_ahead_kb`, 'utf8')).trim(), '1024');

  const dir = await mkdtemp(`/tmp/vircpt-binding-${process.pid}-`);
  t.after(() => rm(dir, { recursive: true, force: true }));
  for (const bad of ['no_such_option', 'relatime', 'max_readahead=lots', 'ro=1', 'fsname=a,b', 'umask=999']) {
    await assert.rejects(mountFuse(dir, ops, { extraOptions: [bad] }), (err) => isVircptError(err, 'INVALID'), bad);
  }
  await assert.rejects(mountFuse(dir, ops, { fsname: 'x'.repeat(2000) }), (err) => isVircptError(err, 'INVALID'));
  assert.equal(await isMounted(dir), false, 'a refused option left a mount behind');
});

test('unmount() waits for files still open, and a second call shares the first', async (t) => {
  let opened!: () => void;
  const open = new Promise<void>((resolve) => { opened = resolve; });
  const ops = patternFs(MIB, async () => {});
  const mount = await scratchMount(t, { ...ops, open: async () => { opened(); return { fh: 1 }; } });
  // The reader opens the file, then holds it until told to read (a line on its stdin).
  const script = 'exec 3<"$1"; read -r go; head -c 4096 <&3 | wc -c';
  const reader = spawn('sh', ['-c', script, 'sh', `${mount.mountpoint}/data`], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.after(() => reader.kill('SIGKILL'));
  let out = '';
  reader.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  const ended = new Promise<number | null>((resolve) => reader.on('close', resolve));
  await open;
  const first = mount.unmount();
  assert.equal(mount.unmount(), first);
  // The file stays open until the reader is told to go on: unmount() must not have resolved.
  const early = await Promise.race([first.then(() => 'resolved'), sleep(400).then(() => 'waiting')]);
  assert.equal(early, 'waiting', 'unmount() resolved while a file was still open');
  reader.stdin.end('go\n');
  assert.equal(await ended, 0);
  assert.equal(out.trim(), '4096', 'the open file stopped serving after the lazy unmount');
  await first;
  assert.equal((await mount.exited).external, false);
  assert.equal(await isMounted(mount.mountpoint), false);
});

test('a failed operation reaches the reader as its errno, EIO when it has none', async (t) => {
  const mount = await scratchMount(t, {
    getattr: async (path) => (path === '/' ? DIR : path === '/broken' || path === '/liar' ? file(MIB) : Promise.reject(notFound(path))),
    open: async () => ({ fh: 7 }),
    read: async (path, _fh, _buf, len) => {
      if (path === '/liar') return len + 1; // more than asked: refused, not passed on
      throw new Error('backend gone');
    },
  });
  const cat = (name: string) => execFileP('cat', [`${mount.mountpoint}/${name}`]).then(() => '', (err: { stderr: string }) => err.stderr);
  assert.match(await cat('missing'), /No such file or directory/);
  assert.match(await cat('broken'), /Input\/output error/);
  assert.match(await cat('liar'), /Input\/output error/);
});
