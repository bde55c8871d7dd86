// NbdClient against nbdkit: synthetic exports whose bytes are known (pattern), sparse ones
// compared with nbdcopy/nbdinfo, block-size limits, and failures injected with filters.

import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import { NbdClient, mergeExtents, type Extent, type NbdClientOptions } from '../../src/nbd/index.js';
import { listExports } from './listing.js';
import { makeTempDir, nbdcopyTo, nbdinfoMap, startNbdkit, type NbdServer, type NbdkitOptions } from './servers.js';

const MiB = 1024 * 1024;

/** nbdkit-pattern-plugin: each 8-byte word holds its own offset, big-endian. */
function patternBytes(offset: number, length: number): Buffer {
  const start = offset - (offset % 8);
  const buf = Buffer.alloc(offset + length - start + 8);
  for (let at = 0; at + 8 <= buf.length; at += 8) buf.writeBigUInt64BE(BigInt(start + at), at);
  return buf.subarray(offset - start, offset - start + length);
}

async function collect(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

/** Runs `body` with a fresh nbdkit and a client on it; both go away whatever happens. */
async function withNbdkit(server: NbdkitOptions, client: Partial<NbdClientOptions>,
  body: (c: NbdClient, s: NbdServer) => Promise<void>): Promise<void> {
  const s = await startNbdkit(server);
  let c: NbdClient | undefined;
  try {
    c = await NbdClient.connect({ ...(s.socketPath ? { socketPath: s.socketPath } : { host: s.host!, port: s.port! }), exportName: s.exportName, ...client });
    await body(c, s);
  } finally {
    c?.destroy();
    await s.stop();
  }
}

const RANGES: [number, number][] = [[0, 4096], [1, 7], [12345, 100000], [3 * MiB - 5, 9 * MiB + 11], [64 * MiB - 3, 3]];

describe('NbdClient against nbdkit', () => {
  it('reads the pattern plugin byte for byte over a Unix socket and over TCP', async () => {
    for (const tcp of [false, true]) {
      await withNbdkit({ plugin: ['pattern', '64M'], tcp }, {}, async (c, s) => {
        assert.equal(c.size, 64 * MiB);
        if (tcp) assert.match(s.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/$/);
        for (const [offset, length] of RANGES) {
          assert.ok((await c.read(offset, length)).equals(patternBytes(offset, length)), `${length}@${offset} tcp=${tcp}`);
        }
        assert.deepEqual((await listExports(s.socketPath ? { socketPath: s.socketPath } : { host: s.host!, port: s.port! })).map((e) => e.name), ['']);
      });
    }
  });

  it('honours the minimum, preferred and maximum block sizes', async () => {
    // With error policy, any unaligned or oversize request would fail with EINVAL.
    const policy = ['blocksize-policy', 'blocksize-minimum=4096', 'blocksize-preferred=64K', 'blocksize-maximum=128K', 'blocksize-error-policy=error'];
    await withNbdkit({ plugin: ['pattern', '64M'], filters: [policy] }, { metaContexts: ['base:allocation'] }, async (c) => {
      assert.deepEqual(c.blockSize, { minimum: 4096, preferred: 65536, maximum: 128 * 1024 });
      assert.equal(c.requestSize, 128 * 1024);
      for (const [offset, length] of RANGES) {
        assert.ok((await c.read(offset, length)).equals(patternBytes(offset, length)), `${length}@${offset}`);
      }
      assert.deepEqual(await collect(c.blockStatus('base:allocation', 5, 4096)), [{ offset: 5, length: 4096, flags: 0 }]);
    });
  });

  it('reads and maps a sparse export as nbdcopy and nbdinfo do', async () => {
    const plugin = ['sparse-random', '64M', 'seed=42', 'percent=30', 'runlength=65536'];
    await withNbdkit({ plugin }, { metaContexts: ['base:allocation'] }, async (c, s) => {
      const raw = path.join(s.dir, 'copy.raw');
      await nbdcopyTo(s.uri, raw);
      assert.ok((await c.read(0, c.size)).equals(await readFile(raw)));
      const map = (await nbdinfoMap(s.uri, 'base:allocation')).map(({ offset, length, type }) => ({ offset, length, flags: type }));
      const ours = await collect(c.blockStatus('base:allocation', 0, c.size));
      assert.ok(ours.length > 100, `only ${ours.length} extents`);
      assert.deepEqual(ours, mergeExtents(map));
    });
  });

  it('reads the memory plugin as zeros, mapped as one hole', async () => {
    await withNbdkit({ plugin: ['memory', '32M'] }, { metaContexts: ['base:allocation'] }, async (c) => {
      const into = Buffer.alloc(32 * MiB, 0xaa);
      await c.read(0, 32 * MiB, into);
      assert.ok(into.equals(Buffer.alloc(32 * MiB)));
      assert.deepEqual(await collect(c.blockStatus('base:allocation', 0, c.size)), [{ offset: 0, length: 32 * MiB, flags: 3 }]);
    });
  });

  it('fails a request with the server errno and keeps the connection', async () => {
    const tmp = await makeTempDir();
    const trigger = path.join(tmp.path, 'inject');
    await writeFile(trigger, '');
    const filter = ['error', 'error=EPERM', 'error-pread-rate=100%', `error-pread-file=${trigger}`];
    try {
      await withNbdkit({ plugin: ['pattern', '16M'], filters: [filter] }, {}, async (c) => {
        await assert.rejects(c.read(0, 8 * MiB), (e) => isVircptError(e, 'NBD_SERVER_ERROR') && e.errno === 1 && /EPERM/.test(e.message));
        await rm(trigger);
        assert.ok((await c.read(4096, 8 * MiB)).equals(patternBytes(4096, 8 * MiB)));
      });
    } finally {
      await tmp.remove();
    }
    // The pattern plugin has no extents of its own, so nbdkit answers those without the filter.
    await withNbdkit({ plugin: ['memory', '16M'], filters: [['error', 'error=ENOSPC', 'error-extents-rate=100%']] },
      { metaContexts: ['base:allocation'] }, async (c) => {
        await assert.rejects(collect(c.blockStatus('base:allocation', 0, 4096)), (e) => isVircptError(e, 'NBD_SERVER_ERROR') && e.errno === 28);
        assert.ok((await c.read(0, MiB)).equals(Buffer.alloc(MiB)));
      });
  });

  it('times out a request the server does not answer, and ends the connection (nothing behind it could arrive)', async () => {
    await withNbdkit({ plugin: ['pattern', '16M'], filters: [['delay', 'rdelay=1']] },
      { requestTimeoutMs: 200, metaContexts: ['base:allocation'] }, async (c) => {
        const t0 = Date.now();
        await assert.rejects(c.read(0, 4096), (e) => isVircptError(e, 'TIMEOUT'));
        const waited = Date.now() - t0;
        assert.ok(waited >= 190 && waited < 900, `timed out after ${waited} ms`);
        assert.ok(isVircptError(c.failure, 'TIMEOUT'), 'the connection failed with the timeout');
        await assert.rejects(c.read(0, 1), (e) => isVircptError(e, 'TIMEOUT'));
        const t1 = Date.now();
        await c.close();
        assert.ok(Date.now() - t1 < 900, `close took ${Date.now() - t1} ms`);
      });
  });

  it('aborts a request by signal', async () => {
    await withNbdkit({ plugin: ['pattern', '16M'], filters: [['delay', 'rdelay=2']] }, {}, async (c) => {
      const ac = new AbortController();
      setTimeout(() => ac.abort(new Error('user gave up')), 50);
      const t0 = Date.now();
      await assert.rejects(c.read(0, 12 * MiB, undefined, ac.signal), (e) => isVircptError(e, 'ABORTED'));
      assert.ok(Date.now() - t0 < 1000);
      await assert.rejects(c.read(0, 1, undefined, AbortSignal.abort()), (e) => isVircptError(e, 'ABORTED'));
      await assert.rejects(c.read(0, 12 * MiB, undefined, AbortSignal.abort()), (e) => isVircptError(e, 'ABORTED'));
    });
  });

  it('fails every pending request at once when the server is killed', async () => {
    await withNbdkit({ plugin: ['pattern', '64M'], filters: [['delay', 'rdelay=3']] }, { maxInFlight: 4 }, async (c, s) => {
      const reads = Array.from({ length: 10 }, (_, i) => c.read(i * 4 * MiB, 4 * MiB).then(() => 'read', (e: unknown) => e));
      await new Promise((r) => setTimeout(r, 300));
      const killedAt = Date.now();
      process.kill(s.pid, 'SIGKILL');
      const outcomes = await Promise.all(reads);
      assert.ok(Date.now() - killedAt < 1000, `took ${Date.now() - killedAt} ms`);
      for (const o of outcomes) assert.ok(isVircptError(o, 'NBD_CLOSED'), String(o));
      await assert.rejects(c.read(0, 1), (e) => isVircptError(e, 'NBD_CLOSED'));
      await c.close();
    });
  });

  it('lets requests in flight finish on close, then disconnects', async () => {
    await withNbdkit({ plugin: ['pattern', '16M'], filters: [['delay', 'rdelay=200ms']] }, {}, async (c) => {
      const reads = [c.read(0, MiB), c.read(5 * MiB, 3 * MiB)];
      await c.close();
      const [a, b] = await Promise.all(reads);
      assert.ok(a.equals(patternBytes(0, MiB)) && b.equals(patternBytes(5 * MiB, 3 * MiB)));
      await c.close(); // idempotent
      c.destroy(); // and harmless afterwards
    });
  });

  it('closes at the end of an await using block', async () => {
    const s = await startNbdkit({ plugin: ['pattern', '1M'] });
    try {
      let kept: NbdClient | undefined;
      {
        await using c = await NbdClient.connect({ socketPath: s.socketPath!, exportName: '' });
        kept = c;
        assert.ok((await c.read(8, 8)).equals(patternBytes(8, 8)));
      }
      await assert.rejects(kept.read(0, 8), (e) => isVircptError(e, 'NBD_CLOSED'));
    } finally {
      await s.stop();
    }
  });

  it('keeps no more requests in flight than allowed', async () => {
    await withNbdkit({ plugin: ['pattern', '16M'], filters: [['delay', 'rdelay=150ms']] }, { maxInFlight: 2 }, async (c) => {
      const t0 = Date.now();
      await Promise.all(Array.from({ length: 8 }, (_, i) => c.read(i * MiB, MiB)));
      assert.ok(Date.now() - t0 >= 4 * 150 - 20, `8 requests, 2 at a time, took ${Date.now() - t0} ms`);
    });
    await withNbdkit({ plugin: ['pattern', '16M'], filters: [['delay', 'rdelay=150ms']] }, { maxInFlightBytes: 2 * MiB, requestSize: MiB }, async (c) => {
      const t0 = Date.now();
      assert.ok((await c.read(0, 8 * MiB)).equals(patternBytes(0, 8 * MiB)));
      assert.ok(Date.now() - t0 >= 4 * 150 - 20, `8 MiB, 2 MiB at a time, took ${Date.now() - t0} ms`);
    });
  });

  it('refuses a server without structured replies, and bounds the handshake in time', async () => {
    const s = await startNbdkit({ plugin: ['pattern', '1M'], extraArgs: ['--no-sr'] });
    try {
      await assert.rejects(NbdClient.connect({ socketPath: s.socketPath!, exportName: '' }),
        (e) => isVircptError(e, 'NBD_UNSUPPORTED') && /structured replies/.test(e.message));
    } finally {
      await s.stop();
    }
    const slow = await startNbdkit({ plugin: ['pattern', '1M'], filters: [['delay', 'delay-open=5']] });
    try {
      const t0 = Date.now();
      await assert.rejects(NbdClient.connect({ socketPath: slow.socketPath!, exportName: '', connectTimeoutMs: 300 }),
        (e) => isVircptError(e, 'TIMEOUT'));
      assert.ok(Date.now() - t0 < 1500);
    } finally {
      await slow.stop();
    }
    await assert.rejects(NbdClient.connect({ socketPath: path.join(s.dir, 'gone.sock'), exportName: '' }),
      (e) => isVircptError(e, 'NBD_CLOSED') && /ENOENT/.test(e.message));
  });
});
