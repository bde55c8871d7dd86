// What the addon (native/) promises beyond reading: the request's caller reaches the
// operations, FUSE_INTERRUPT aborts a read, a synchronous call into the own mount fails instead
// of hanging, write-like calls answer EROFS in C, /dev/fuse is close-on-exec, directories of any
// size list whole, names longer than NAME_MAX are refused.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { constants } from 'node:os';
import { test } from 'node:test';
import type { FuseContext, FuseOperations } from '../../src/fs/fuse/index.js';
import { DIR, execFileP, file, notFound, requireFuseTools, scratchMount } from './scratch-mount.js';

const NOBODY = 65534;

/** A tree of one file, /data, whose reads wait for `gate` (when set) and record their caller. */
function recordingFs(seen: FuseContext[], gate?: (ctx: FuseContext) => Promise<void>): FuseOperations {
  return {
    getattr: async (path, ctx) => {
      seen.push(ctx);
      return path === '/' ? { ...DIR, mode: 0o40555 } : path === '/data' ? file(4096) : Promise.reject(notFound(path));
    },
    readdir: async () => ['data'],
    open: async () => ({ fh: 9, directIo: true }),
    read: async (_path, _fh, buf, len, pos, ctx) => {
      await gate?.(ctx);
      return buf.fill(0x61, 0, Math.max(0, Math.min(len, 4096 - pos))).subarray(0, Math.max(0, Math.min(len, 4096 - pos))).length;
    },
  };
}

test("operations see the caller's uid, gid and pid", async (t) => {
  await requireFuseTools(['runuser', 'util-linux']);
  const seen: FuseContext[] = [];
  const mount = await scratchMount(t, recordingFs(seen), { allowOther: true });
  await execFileP('chmod', ['755', mount.mountpoint]).catch(() => {}); // EROFS is fine: modes come from getattr
  const child = spawn('runuser', ['-u', 'nobody', '--', 'sh', '-c', 'echo $$; exec stat -c %s "$1"', 'sh', `${mount.mountpoint}/data`]);
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d; });
  await new Promise((resolve) => child.on('close', resolve));
  const [pid, size] = out.trim().split('\n');
  assert.equal(size, '4096', 'nobody could stat the file (allow_other)');
  const theirs = seen.find((c) => c.uid === NOBODY);
  assert.ok(theirs, `no request came from uid ${NOBODY}: ${JSON.stringify(seen)}`);
  assert.equal(theirs.gid, NOBODY, "nobody's group (nogroup)");
  assert.equal(theirs.pid, Number(pid), 'the pid is the caller (sh exec-ed into stat)');
});

test('an interrupted read is answered EINTR at once and its signal aborts', async (t) => {
  await requireFuseTools(['python3', 'python3']);
  let reached!: () => void;
  const readStarted = new Promise<void>((resolve) => { reached = resolve; });
  let aborted!: (reason: unknown) => void;
  const abortSeen = new Promise((resolve) => { aborted = resolve; });
  const mount = await scratchMount(t, recordingFs([], (ctx) => new Promise((_, reject) => {
    ctx.signal?.addEventListener('abort', () => { aborted(ctx.signal?.reason); reject(ctx.signal?.reason); });
    reached();
  })));
  // A handler that raises: Python does not retry the read (PEP 475), so EINTR reaches it.
  const script = `
import os, signal, sys
def stop(*_): raise InterruptedError("signal")
signal.signal(signal.SIGUSR1, stop)
fd = os.open(sys.argv[1], os.O_RDONLY)
print("open", flush=True)
try:
    os.read(fd, 4096)
    print("read")
except InterruptedError:
    print("interrupted")
`;
  const reader = spawn('python3', ['-c', script, `${mount.mountpoint}/data`]);
  let out = '';
  reader.stdout.on('data', (d: Buffer) => { out += d; });
  const closed = new Promise((resolve) => reader.on('close', resolve));
  await readStarted;
  reader.kill('SIGUSR1');
  assert.ok(await abortSeen, 'the read never saw its signal abort');
  await closed;
  assert.deepEqual(out.trim().split('\n'), ['open', 'interrupted']);
  assert.equal(mount.pending, 0, 'a request is still held after the interrupt');
});

test('a synchronous call of the daemon into its own mount fails with EDEADLK instead of hanging', async (t) => {
  const mount = await scratchMount(t, recordingFs([]), { deadlockGuardMs: 300 });
  // readFileSync blocks this very thread, the one that serves the mount.
  // libuv has no name for EDEADLK: Node reports it by number.
  assert.throws(() => readFileSync(`${mount.mountpoint}/data`), (err: NodeJS.ErrnoException) => err.errno === -constants.errno.EDEADLK);
  assert.ok(mount.deadlocksAvoided >= 1);
  // The loop is back: the mount serves as before.
  assert.equal((await readFile(`${mount.mountpoint}/data`)).length, 4096);
});

test('write-like calls answer EROFS from the addon itself, also without the ro mount flag', async (t) => {
  await requireFuseTools(['python3', 'python3'], ['truncate', 'coreutils'], ['ln', 'coreutils']);
  const mount = await scratchMount(t, recordingFs([]));
  const m = mount.mountpoint;
  const calls: Array<[string, string[]]> = [
    ['touch', [`${m}/new`]], ['mkdir', [`${m}/dir`]], ['rm', ['-f', `${m}/data`]], ['mv', [`${m}/data`, `${m}/moved`]],
    ['chmod', ['600', `${m}/data`]], ['chown', ['1:1', `${m}/data`]], ['ln', [`${m}/data`, `${m}/hard`]],
    ['ln', ['-s', 'data', `${m}/soft`]], ['truncate', ['-s', '0', `${m}/data`]], ['touch', ['-d', '@0', `${m}/data`]],
    ['python3', ['-c', 'import os,sys; os.setxattr(sys.argv[1], "user.x", b"1")', `${m}/data`]],
    ['python3', ['-c', 'import os,sys; os.open(sys.argv[1], os.O_WRONLY)', `${m}/data`]],
    ['mknod', [`${m}/fifo`, 'p']],
  ];
  for (const [cmd, args] of calls) {
    const err = await execFileP(cmd, args).then(() => undefined, (e: { stderr: string }) => e.stderr);
    assert.ok(err !== undefined, `${cmd} ${args.join(' ')} succeeded on a read-only filesystem`);
    assert.match(err, /Read-only file system|EROFS|Errno 30/, `${cmd} ${args.join(' ')}: ${err}`);
  }
  assert.deepEqual(await readdir(m), ['data'], 'the tree changed');
  assert.equal((await stat(`${m}/data`)).size, 4096);
});

test('/dev/fuse is close-on-exec: a child process never holds the mount open', async (t) => {
  await scratchMount(t, recordingFs([]));
  const { stdout } = await execFileP('sh', ['-c', 'for f in /proc/$$/fd/*; do readlink "$f" || true; done']);
  assert.doesNotMatch(stdout, /\/dev\/fuse/, `a child inherited /dev/fuse:\n${stdout}`);
  const ours = await execFileP('sh', ['-c', `for f in /proc/${process.pid}/fd/*; do readlink "$f" || true; done`]);
  assert.match(ours.stdout, /\/dev\/fuse/, 'the test process itself holds /dev/fuse (the check above means something)');
});

test('a directory of thousands of entries lists whole; inode numbers agree between ls -i and stat', async (t) => {
  const names = Array.from({ length: 5000 }, (_, i) => `file-${String(i).padStart(5, '0')}-${'x'.repeat(i % 200)}`);
  const known = new Set(names);
  const mount = await scratchMount(t, {
    getattr: async (path) => (path === '/' ? DIR : known.has(path.slice(1)) ? file(1) : Promise.reject(notFound(path))),
    readdir: async () => names,
  });
  const listed = await readdir(mount.mountpoint);
  assert.deepEqual(listed.sort(), [...names].sort());
  const { stdout } = await execFileP('ls', ['-i1', mount.mountpoint], { maxBuffer: 64 * 2 ** 20 });
  const first = stdout.split('\n').find((l) => l.includes('file-00007'))!.trim().split(/\s+/);
  assert.equal(String((await stat(`${mount.mountpoint}/${first[1]}`)).ino), first[0], 'ls -i and stat disagree');
});

test('a name longer than 255 bytes is ENAMETOOLONG; an unknown one ENOENT', async (t) => {
  const mount = await scratchMount(t, recordingFs([]));
  await assert.rejects(stat(`${mount.mountpoint}/${'é'.repeat(128)}`), { code: 'ENAMETOOLONG' });
  await assert.rejects(stat(`${mount.mountpoint}/${'a'.repeat(255)}`), { code: 'ENOENT' });
});
