// The client against a hostile or broken NBD server (a fake: no real server misbehaves on
// demand). Whatever the server does, the affected reads fail with an error the FUSE edge turns
// into EIO, nothing throws out of the client, and no caller's buffer ever holds a wrong byte.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { isVircptError } from '../../src/errors.js';
import { EIO, toErrno } from '../../src/fs/errno.js';
import { NbdClient, type NbdClientOptions } from '../../src/nbd/client.js';
import { offsetData } from './wire.js';
import { startFakeHostileServer, type Answer, type ReadRequest } from './fake-hostile-server.js';

const KiB = 1024;
const SIZE = 1024 * KiB;
const FILL = 0xee; // never a content byte (content bytes are < 200)
const CONTENT = Buffer.from(Array.from({ length: SIZE }, (_, i) => (i * 7 + (i >> 12)) % 200));

/** Each byte of a read's buffer is either untouched or the export's own byte there. */
function assertNoWrongByte(buf: Buffer, offset: number, what: string): void {
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] !== FILL && buf[i] !== CONTENT[offset + i]) assert.fail(`${what}: wrong byte at ${offset + i}`);
  }
}

async function until(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting: ${what}`);
    await tick();
  }
}

type Outcome = { ok: true } | { ok: false; err: unknown };

/** Four 64 KiB reads at once; the second is answered by `bad`. */
async function fourReads(bad: (r: ReadRequest, honest: Buffer) => Answer, opts: Partial<NbdClientOptions> = {}) {
  const server = await startFakeHostileServer(CONTENT, (r) => (r.index === 1 ? bad(r, server.honest(r)) : undefined));
  try {
    const client = await NbdClient.connect({ socketPath: server.socketPath, exportName: '', ...opts });
    const bufs = [0, 1, 2, 3].map(() => Buffer.alloc(64 * KiB, FILL));
    const t0 = Date.now();
    const outcomes: Outcome[] = await Promise.all(bufs.map((b, i) =>
      client.read(i * 64 * KiB, 64 * KiB, b).then(() => ({ ok: true as const }), (err: unknown) => ({ ok: false as const, err }))));
    const ms = Date.now() - t0;
    bufs.forEach((b, i) => assertNoWrongByte(b, i * 64 * KiB, `read ${i}`));
    assert.ok(outcomes[0]!.ok && bufs[0]!.equals(CONTENT.subarray(0, 64 * KiB)), 'the read answered before the fault is right');
    const failed = outcomes.filter((o): o is { ok: false; err: unknown } => !o.ok);
    assert.ok(failed.length >= 1 && !outcomes[1]!.ok, 'the misanswered read failed');
    for (const f of failed) assert.equal(toErrno(f.err), EIO, `EIO for ${String(f.err)}`);
    client.destroy();
    // The server's next connection is read afresh, and right.
    const next = await NbdClient.connect({ socketPath: server.socketPath, exportName: '' });
    assert.ok((await next.read(128 * KiB, 64 * KiB)).equals(CONTENT.subarray(128 * KiB, 192 * KiB)));
    await next.close();
    return { errors: failed.map((f) => f.err), ms };
  } finally {
    await server.stop();
  }
}

describe('NbdClient against a hostile server (fake)', () => {
  it('a bad reply magic fails the reads (protocol error)', async () => {
    const { errors } = await fourReads((_, honest) => {
      const bad = Buffer.from(honest);
      bad.writeUInt32BE(0xdeadbeef, 0);
      return { frames: [bad] };
    });
    assert.ok(errors.every((e) => isVircptError(e, 'NBD_PROTOCOL') || isVircptError(e, 'NBD_CLOSED')), String(errors));
    assert.match(String(errors[0]), /bad reply magic/);
  });

  it('a data chunk longer than asked fails the read before a byte lands', async () => {
    const { errors } = await fourReads((r) => ({
      frames: [offsetData(r.cookie, r.offset, CONTENT.subarray(r.offset, r.offset + r.length + 4 * KiB), true)],
    }));
    assert.match(String(errors[0]), /NBD protocol error/);
  });

  it('a reply for an unknown cookie fails the reads', async () => {
    const { errors } = await fourReads((_, honest) => {
      const bad = Buffer.from(honest);
      bad.writeBigUInt64BE(999_999n, 8);
      return { frames: [bad] };
    });
    assert.match(String(errors[0]), /unknown cookie/);
  });

  it('a frame cut short (the server goes away mid-reply) fails the reads', async () => {
    const { errors } = await fourReads((_, honest) => ({ frames: [honest.subarray(0, 28 + 20 * KiB)], close: true }));
    assert.ok(errors.every((e) => isVircptError(e, 'NBD_CLOSED')), String(errors));
  });

  it('a server that stops answering: the reads fail at the client\'s deadline', async () => {
    const { errors, ms } = await fourReads(() => ({ frames: [] }), { requestTimeoutMs: 300 });
    assert.ok(errors.every((e) => isVircptError(e, 'TIMEOUT')), String(errors));
    assert.ok(ms < 3000, `failed after ${ms} ms`);
  });

  it('an abandoned read: no byte reaches its buffer once it failed, and it holds its limiter slot until its reply ends', async () => {
    let released = false;
    let secondSawWholeFirst: boolean | undefined;
    const server = await startFakeHostileServer(CONTENT, (r) => {
      if (r.index === 1) secondSawWholeFirst = released;
      if (r.index !== 0) return undefined;
      // The first 64 KiB, then the rest only when the test says: the socket then waits with
      // the caller's buffer as its next read's destination.
      const whole = server.honest(r);
      return { frames: [whole.subarray(0, 28 + 64 * KiB)], later: [whole.subarray(28 + 64 * KiB)] };
    });
    try {
      const client = await NbdClient.connect({ socketPath: server.socketPath, exportName: '', maxInFlight: 1 });
      const buf = Buffer.alloc(256 * KiB, FILL);
      const ac = new AbortController();
      let atRejection: Buffer | undefined;
      const first = client.read(0, 256 * KiB, buf, ac.signal).then(() => 'read', (err: unknown) => {
        atRejection = Buffer.from(buf);
        return err;
      });
      await until('the first 64 KiB arrived', () => buf[64 * KiB - 1] === CONTENT[64 * KiB - 1]);
      ac.abort(new Error('the reader gave up'));
      const second = client.read(512 * KiB, 64 * KiB);
      await tick(); // whatever the abort set off in promise callbacks has run
      assert.equal(client.load, 256 * KiB + 64 * KiB, 'the abandoned read still holds its bytes; the next one waits');
      released = true;
      server.release();
      assert.ok(isVircptError(await first, 'ABORTED'), String(await first));
      assert.ok((await second).equals(CONTENT.subarray(512 * KiB, 576 * KiB)), 'the next read is right');
      assert.equal(secondSawWholeFirst, true, 'the next request went out only once the abandoned reply ended');
      assert.ok(buf.equals(atRejection!), 'no byte landed in the buffer after the read failed');
      assertNoWrongByte(buf, 0, 'the abandoned read');
      await client.close();
    } finally {
      await server.stop();
    }
  });
});
