// NbdClient and NbdPool against qemu-nbd serving a qcow2 with persistent dirty bitmaps,
// compared with the C reference tools (nbdcopy, nbdinfo) on the same export.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isVircptError } from '../../src/errors.js';
import {
  NbdClient, NbdMetaContextError, NbdOptionError, NbdPool, mergeExtents, parseNbdUri, type Extent,
} from '../../src/nbd/index.js';
import { listExports, listMetaContexts } from './listing.js';
import { readAll } from './read-all.js';
import { NBD_REP_ERR_UNKNOWN } from '../../src/nbd/constants.js';
import {
  execFileP, makeQcow2, makeTempDir, nbdcopyTo, nbdinfoMap, startQemuNbd, type NbdServer, type TempDir,
} from './servers.js';

const MiB = 1024 * 1024;
const SIZE = 96 * MiB;
const CONTEXTS = ['base:allocation', 'qemu:dirty-bitmap:b1', 'qemu:dirty-bitmap:b2'];

async function collect(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

/** nbdinfo's map, clipped to [offset, offset+length) and merged, in our extent shape. */
function clip(map: { offset: number; length: number; type: number }[], offset: number, length: number): Extent[] {
  const end = offset + length;
  return mergeExtents(map.flatMap((e) => {
    const from = Math.max(e.offset, offset);
    const to = Math.min(e.offset + e.length, end);
    return to > from ? [{ offset: from, length: to - from, flags: e.type }] : [];
  }));
}

describe('NbdClient against qemu-nbd', () => {
  let tmp: TempDir;
  let server: NbdServer;
  let reference: Buffer;
  let client: NbdClient;

  before(async () => {
    tmp = await makeTempDir();
    const image = path.join(tmp.path, 'disk.qcow2');
    await makeQcow2(image, SIZE, [
      { io: ['write -P 0x11 0 1M', 'write -P 0x22 5M 3M', 'write -P 0x33 12345 70000', 'write -z 20M 2M'] },
      { bitmap: 'b1' },
      { io: ['write -P 0x44 1M 512K', 'write -P 0x55 30M 5M', 'write -P 0x66 60M 100k', 'write -P 0x77 95M 1M'] },
      { bitmap: 'b2' },
      { io: ['write -P 0x88 40M 64K', 'write -z 5M 64K'] },
    ]);
    server = await startQemuNbd({ image, bitmaps: ['b1', 'b2'] });
    const raw = path.join(tmp.path, 'reference.raw');
    await nbdcopyTo(server.uri, raw);
    reference = await readFile(raw);
    client = await NbdClient.connect({ socketPath: server.socketPath!, exportName: server.exportName, metaContexts: CONTEXTS });
  });

  after(async () => {
    client?.destroy();
    await server?.stop();
    await tmp?.remove();
  });

  it('reports what the server advertised', () => {
    assert.equal(client.size, SIZE);
    assert.equal(client.readOnly, true);
    assert.equal(client.canMultiConn, true);
    assert.deepEqual(client.blockSize, { minimum: 1, preferred: 4096, maximum: 32 * MiB });
    assert.deepEqual([...client.contexts.keys()].sort(), [...CONTEXTS].sort());
  });

  it('reads the whole export byte for byte as nbdcopy does', async () => {
    const ours = await client.read(0, SIZE);
    assert.ok(ours.equals(reference));
    const into = Buffer.alloc(SIZE + 7, 0xff);
    const same = await client.read(0, SIZE, into);
    assert.equal(same.buffer, into.buffer);
    assert.ok(into.subarray(0, SIZE).equals(reference));
  });

  it('reads the same bytes through the plain byte-feeding path (no onread, as TLS sockets need)', async () => {
    const plain = await NbdClient.connect({ socketPath: server.socketPath!, exportName: server.exportName, onread: false });
    try {
      assert.ok((await plain.read(0, SIZE)).equals(reference));
    } finally {
      await plain.close();
    }
  });

  it('reads everything but what base:allocation calls zero, as nbdcopy does', async () => {
    const out = Buffer.alloc(SIZE);
    let zeros = 0;
    const result = await readAll(client, { onData: (offset, data) => { data.copy(out, offset); }, onZero: (_o, length) => { zeros += length; } });
    assert.ok(out.equals(reference));
    const map = await nbdinfoMap(server.uri, 'base:allocation');
    const zeroBytes = map.filter((e) => e.type & 2).reduce((n, e) => n + e.length, 0);
    assert.ok(zeroBytes > 0);
    assert.deepEqual(result, { bytesRead: SIZE - zeroBytes, bytesSkipped: zeroBytes });
    assert.equal(zeros, zeroBytes);
  });

  it('reads unaligned ranges byte for byte', async () => {
    for (const [offset, length] of [[12345, 70000], [1, 1], [5 * MiB - 3, 2 * MiB + 5], [SIZE - 1, 1], [20 * MiB - 100, 200]] as const) {
      const ours = await client.read(offset, length);
      assert.ok(ours.equals(reference.subarray(offset, offset + length)), `${length}@${offset}`);
    }
  });

  it('splits reads larger than the server maximum', async () => {
    const big = await NbdClient.connect({ socketPath: server.socketPath!, exportName: server.exportName, requestSize: 64 * MiB });
    try {
      assert.equal(big.requestSize, 32 * MiB);
      assert.ok((await big.read(0, SIZE)).equals(reference));
    } finally {
      await big.close();
    }
  });

  for (const context of CONTEXTS) {
    it(`gives the extents nbdinfo gives for ${context}`, async () => {
      const map = await nbdinfoMap(server.uri, context);
      assert.deepEqual(await collect(client.blockStatus(context, 0, SIZE)), clip(map, 0, SIZE));
      assert.deepEqual(await collect(client.blockStatus(context, 12345, 50 * MiB)), clip(map, 12345, 50 * MiB));
      assert.deepEqual(await collect(client.blockStatus(context, SIZE - 5, 5)), clip(map, SIZE - 5, 5));
    });
  }

  it('rejects ranges past the end cleanly and keeps the connection', async () => {
    await assert.rejects(client.read(SIZE - 10, 20), (e) => isVircptError(e, 'INVALID'));
    await assert.rejects(client.read(SIZE, 1), (e) => isVircptError(e, 'INVALID'));
    await assert.rejects(collect(client.blockStatus('base:allocation', SIZE - 1, 2)), (e) => isVircptError(e, 'INVALID'));
    await assert.rejects(collect(client.blockStatus('qemu:dirty-bitmap:nope', 0, 1)), (e) => isVircptError(e, 'INVALID'));
    assert.ok((await client.read(SIZE - 10, 10)).equals(reference.subarray(SIZE - 10)));
  });

  it('names a bitmap the export does not have', async () => {
    await assert.rejects(
      NbdClient.connect({ socketPath: server.socketPath!, exportName: server.exportName, metaContexts: ['base:allocation', 'qemu:dirty-bitmap:nope'] }),
      (e) => e instanceof NbdMetaContextError && e.code === 'NBD_UNSUPPORTED'
        && e.missing.join() === 'qemu:dirty-bitmap:nope' && /qemu:dirty-bitmap:nope/.test(e.message),
    );
  });

  it('reports an unknown export with the server reply', async () => {
    await assert.rejects(NbdClient.connect({ socketPath: server.socketPath!, exportName: 'nope' }),
      (e) => e instanceof NbdOptionError && e.reply === NBD_REP_ERR_UNKNOWN && /nope/.test(e.message));
  });

  it('lists exports and meta contexts as nbdinfo does', async () => {
    const { stdout } = await execFileP('nbdinfo', ['--list', '--json', server.uri]);
    const info = JSON.parse(stdout) as { exports: { 'export-name': string; contexts: string[]; uri: string }[] };
    assert.deepEqual((await listExports({ socketPath: server.socketPath! })).map((e) => e.name), info.exports.map((e) => e['export-name']));
    const contexts = await listMetaContexts({ socketPath: server.socketPath! }, server.exportName);
    assert.deepEqual([...contexts].sort(), [...info.exports[0]!.contexts].sort());
    const bitmaps = await listMetaContexts({ socketPath: server.socketPath! }, server.exportName, ['qemu:dirty-bitmap:']);
    assert.deepEqual(bitmaps.sort(), ['qemu:dirty-bitmap:b1', 'qemu:dirty-bitmap:b2']);
    // Our URI for the export is the one libnbd prints, and reads back to the same target.
    assert.equal(server.uri, info.exports[0]!.uri);
    assert.deepEqual(parseNbdUri(server.uri), { exportName: server.exportName, socketPath: server.socketPath, tls: false });
  });

  it('spreads a pool over several connections with the same bytes and extents', async () => {
    const pool = await NbdPool.connect({ socketPath: server.socketPath!, exportName: server.exportName, metaContexts: CONTEXTS, connections: 4 });
    try {
      assert.equal(pool.clients.length, 4);
      assert.ok((await pool.read(0, SIZE)).equals(reference));
      assert.ok((await pool.read(777, 20 * MiB)).equals(reference.subarray(777, 777 + 20 * MiB)));
      const map = await nbdinfoMap(server.uri, 'qemu:dirty-bitmap:b1');
      assert.deepEqual(await collect(pool.blockStatus('qemu:dirty-bitmap:b1', 0, SIZE)), clip(map, 0, SIZE));
    } finally {
      await pool.close();
    }
  });

  it('fails every pending read at once when qemu-nbd is killed', async () => {
    const doomed = await startQemuNbd({ image: path.join(tmp.path, 'disk.qcow2') });
    try {
      const c = await NbdClient.connect({ socketPath: doomed.socketPath!, exportName: doomed.exportName });
      process.kill(doomed.pid, 'SIGSTOP'); // replies stop: the reads below stay pending
      const reads = Array.from({ length: 6 }, (_, i) => c.read(i * 8 * MiB, 8 * MiB).then(() => 'read', (e: unknown) => e));
      await new Promise((r) => setTimeout(r, 100));
      const killedAt = Date.now();
      process.kill(doomed.pid, 'SIGKILL');
      const outcomes = await Promise.all(reads);
      assert.ok(Date.now() - killedAt < 1000, `took ${Date.now() - killedAt} ms`);
      for (const o of outcomes) assert.ok(isVircptError(o, 'NBD_CLOSED'), String(o));
      await c.close();
    } finally {
      await doomed.stop();
    }
  });

  it('opens one connection only where multi-conn is not advertised', async () => {
    const single = await startQemuNbd({ image: path.join(tmp.path, 'disk.qcow2'), shared: 1 });
    try {
      const pool = await NbdPool.connect({ socketPath: single.socketPath!, exportName: single.exportName, connections: 4 });
      assert.equal(pool.canMultiConn, false);
      assert.equal(pool.clients.length, 1);
      assert.ok((await pool.read(0, 8 * MiB)).equals(reference.subarray(0, 8 * MiB)));
      await pool.close();
    } finally {
      await single.stop();
    }
  });
});
