// The pure reply parser, fed wire bytes built from proto.md: whole, cut at every byte, one
// byte at a time, and read "directly" into request buffers as the socket's onread path does.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  NBD_CMD_BLOCK_STATUS, NBD_CMD_READ, NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_TYPE_ERROR_OFFSET, NBD_REP_ACK, NBD_REP_INFO, NBD_REP_META_CONTEXT,
} from '../../src/nbd/constants.js';
import { NbdParser, type ParserEvent, type ReplyTarget } from '../../src/nbd/parser.js';
import * as w from './wire.js';

type Requests = Record<number, { command: number; offset: number; length: number }>;

interface Outcome { events: unknown[]; sinks: Record<number, string> }

/** Events in a comparable form (buffers as hex, errors as their code, errno and message). */
function plain(e: ParserEvent): unknown {
  switch (e.type) {
    case 'optionReply': return { ...e, data: e.data.toString('hex') };
    case 'blockStatus': return { ...e, extents: [...e.extents] };
    case 'done': return { ...e, error: e.error && { code: e.error.code, errno: e.error.errno, message: e.error.message } };
    case 'protocolError': return { type: e.type, code: e.error.code, message: e.error.message };
    default: return e;
  }
}

/** Runs one parser over `wire`, delivered by `feed`; the sinks start as 0xee so holes show. */
function run(wire: Buffer, requests: Requests, feed: (p: NbdParser, wire: Buffer) => void, phase: 'handshake' | 'transmission' = 'transmission'): Outcome {
  const targets = new Map<number, ReplyTarget>();
  for (const [cookie, r] of Object.entries(requests)) {
    targets.set(Number(cookie), { ...r, sink: r.command === NBD_CMD_READ ? Buffer.alloc(r.length, 0xee) : undefined });
  }
  const events: unknown[] = [];
  const parser: NbdParser = new NbdParser({
    lookup: (cookie) => targets.get(cookie),
    onEvent: (e) => {
      events.push(plain(e));
      // As the connection does: contexts are known once SET_META_CONTEXT has answered.
      if (e.type === 'optionReply' && e.option === NBD_OPT_SET_META_CONTEXT && e.reply === NBD_REP_META_CONTEXT) {
        contexts.push(e.data.readUInt32BE(0));
        parser.setMetaContexts(contexts);
      }
    },
    phase,
  });
  const contexts: number[] = [];
  if (phase === 'transmission') parser.setMetaContexts([7, 9]);
  feed(parser, wire);
  const sinks: Record<number, string> = {};
  for (const [cookie, t] of targets) if (t.sink) sinks[cookie] = t.sink.toString('hex');
  return { events, sinks };
}

/** Pushes through a reused scratch buffer that is scribbled over afterwards: nothing may be kept. */
function pushScratch(p: NbdParser, bytes: Buffer): void {
  const scratch = Buffer.from(bytes);
  p.push(scratch);
  scratch.fill(0xa5);
}

const whole = (p: NbdParser, wire: Buffer) => pushScratch(p, wire);
const byteByByte = (p: NbdParser, wire: Buffer) => { for (let i = 0; i < wire.length; i++) pushScratch(p, wire.subarray(i, i + 1)); };
const cutAt = (cut: number) => (p: NbdParser, wire: Buffer) => { pushScratch(p, wire.subarray(0, cut)); pushScratch(p, wire.subarray(cut)); };

/** The onread path: reads land straight in readTarget() when there is one; read sizes vary. */
const direct = (sizes: number[]) => (p: NbdParser, wire: Buffer) => {
  for (let at = 0, i = 0; at < wire.length; i++) {
    const want = Math.min(sizes[i % sizes.length]!, wire.length - at);
    const target = p.readTarget();
    if (target === undefined) {
      pushScratch(p, wire.subarray(at, at + want));
      at += want;
    } else {
      const n = Math.min(want, target.length);
      wire.copy(target, 0, at, at + n);
      p.advanceDirect(n);
      at += n;
    }
  }
};

function pattern(length: number, seed: number): Buffer {
  return Buffer.from(Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff));
}

// A handshake, then interleaved replies to six requests, each kind of chunk at least once.
const data1 = pattern(500, 1);
const data2 = pattern(200, 2);
const data3 = pattern(100, 3);
const SESSION_REQUESTS: Requests = {
  1: { command: NBD_CMD_READ, offset: 4096, length: 1000 },
  2: { command: NBD_CMD_READ, offset: 0, length: 100 },
  3: { command: NBD_CMD_BLOCK_STATUS, offset: 0, length: 8192 },
  4: { command: NBD_CMD_READ, offset: 200, length: 50 },
  5: { command: NBD_CMD_READ, offset: 0, length: 10 },
  6: { command: NBD_CMD_READ, offset: 64, length: 64 },
};
const SESSION = Buffer.concat([
  w.greeting(3),
  w.optionReply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK),
  w.optionReply(NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT, w.metaContext(7, 'base:allocation')),
  w.optionReply(NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT, w.metaContext(9, 'qemu:dirty-bitmap:b')),
  w.optionReply(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK),
  w.optionReply(NBD_OPT_GO, NBD_REP_INFO, w.infoExport(1 << 20, 0x10b)),
  w.optionReply(NBD_OPT_GO, NBD_REP_INFO, w.infoBlockSize(1, 4096, 1 << 25)),
  w.optionReply(NBD_OPT_GO, NBD_REP_ACK),
  w.offsetData(1, 4596, data1),
  w.offsetData(2, 0, data3, true),
  w.blockStatus(3, 7, [[4096, 3], [8192, 0]]),
  w.offsetHole(1, 4096, 300),
  w.errorChunk(4, 5, 'boom'),
  w.blockStatus(3, 9, [[8192, 1]], true),
  w.offsetData(1, 4396, data2),
  w.errorChunk(5, 28, 'full', { type: 0x8005 }),
  w.simpleReply(22, 6),
  w.none(1),
]);

describe('NbdParser on a whole session', () => {
  const baseline = run(SESSION, SESSION_REQUESTS, whole, 'handshake');

  it('decodes every event and fills the read buffers', () => {
    const types = baseline.events.map((e) => (e as { type: string }).type);
    assert.deepEqual(types.slice(0, 9), ['greeting', ...Array(7).fill('optionReply'), 'data']);
    assert.deepEqual(baseline.events[0], { type: 'greeting', handshakeFlags: 3 });
    assert.equal(baseline.sinks[1], Buffer.concat([Buffer.alloc(300), data2, data1]).toString('hex'));
    assert.equal(baseline.sinks[2], data3.toString('hex'));
    const bs = baseline.events.filter((e) => (e as { type: string }).type === 'blockStatus');
    assert.deepEqual(bs, [
      { type: 'blockStatus', cookie: 3, contextId: 7, extents: [4096, 3, 8192, 0] },
      { type: 'blockStatus', cookie: 3, contextId: 9, extents: [8192, 1] },
    ]);
    const done = Object.fromEntries(baseline.events.filter((e) => (e as { type: string }).type === 'done')
      .map((e) => { const d = e as { cookie: number; error?: { code: string; errno: number; message: string } }; return [d.cookie, d.error]; }));
    assert.deepEqual(Object.keys(done).map(Number).sort(), [1, 2, 3, 4, 5, 6]);
    assert.equal(done[1], undefined);
    assert.equal(done[2], undefined);
    assert.equal(done[3], undefined);
    assert.equal(done[4]!.code, 'NBD_SERVER_ERROR');
    assert.equal(done[4]!.errno, 5);
    assert.match(done[4]!.message, /EIO: boom/);
    assert.equal(done[5]!.errno, 28);
    assert.match(done[5]!.message, /unknown error chunk type 0x8005/);
    assert.equal(done[6]!.errno, 22);
  });

  it('gives the same result cut at every byte', () => {
    for (let cut = 0; cut <= SESSION.length; cut++) {
      assert.deepEqual(run(SESSION, SESSION_REQUESTS, cutAt(cut), 'handshake'), baseline, `cut at ${cut}`);
    }
  });

  it('gives the same result one byte at a time', () => {
    assert.deepEqual(run(SESSION, SESSION_REQUESTS, byteByByte, 'handshake'), baseline);
  });

  it('gives the same result when payloads are read straight into the destination', () => {
    for (const sizes of [[1], [7, 3], [64], [4096], [13, 200, 1, 50]]) {
      assert.deepEqual(run(SESSION, SESSION_REQUESTS, direct(sizes), 'handshake'), baseline, `read sizes ${sizes}`);
    }
  });
});

describe('NbdParser on bad input', () => {
  const READ_100: Requests = { 1: { command: NBD_CMD_READ, offset: 1000, length: 100 } };
  const BS: Requests = { 1: { command: NBD_CMD_BLOCK_STATUS, offset: 0, length: 4096 } };
  const cases: [string, Buffer, Requests, RegExp, ('handshake' | 'transmission')?][] = [
    ['bad reply magic', Buffer.from('deadbeef00000000000000000000000000000000', 'hex'), READ_100, /bad reply magic 0xdeadbeef/],
    ['bad greeting magic', Buffer.alloc(18), {}, /bad greeting magic/, 'handshake'],
    ['oldstyle server', Buffer.concat([w.greeting(3).subarray(0, 8), Buffer.from('00420281861253', 'hex'), Buffer.alloc(2)]), {}, /oldstyle/, 'handshake'],
    ['oversize option reply', Buffer.concat([w.greeting(3), w.optionReply(NBD_OPT_GO, NBD_REP_INFO, Buffer.alloc(0), 1 << 20)]), {}, /too long/, 'handshake'],
    ['reply for an unknown cookie', w.none(99), READ_100, /unknown cookie 99/],
    ['data outside the request', w.offsetData(1, 1050, pattern(100, 0)), READ_100, /data 100@1050 outside NBD_CMD_READ 100@1000/],
    ['data before the request', w.offsetData(1, 999, pattern(2, 0)), READ_100, /outside/],
    ['oversize data chunk', w.chunk(0, 1, 1, Buffer.alloc(8), 64 << 20), READ_100, /outside/],
    ['overlapping chunks', Buffer.concat([w.offsetData(1, 1000, pattern(60, 0)), w.offsetHole(1, 1050, 50)]), READ_100, /overlaps/],
    ['empty hole', w.offsetHole(1, 1000, 0), READ_100, /empty hole/],
    ['short success', Buffer.concat([w.offsetData(1, 1000, pattern(60, 0)), w.none(1)]), READ_100, /does not cover/],
    ['NONE without DONE', w.chunk(0, 0, 1, Buffer.alloc(0)), READ_100, /NBD_REPLY_TYPE_NONE/],
    ['simple reply with data to a read', w.simpleReply(0, 1), READ_100, /simple reply with data/],
    ['block status to a read', w.blockStatus(1, 7, [[100, 0]]), READ_100, /BLOCK_STATUS chunk/],
    ['data to block status', w.offsetData(1, 0, pattern(10, 0)), BS, /OFFSET_DATA chunk/],
    ['unknown context id', w.blockStatus(1, 8, [[4096, 0]], true), BS, /unknown context id 8/],
    ['context twice', Buffer.concat([w.blockStatus(1, 7, [[4096, 0]]), w.blockStatus(1, 7, [[4096, 0]])]), BS, /two block status chunks/],
    ['missing context', Buffer.concat([w.blockStatus(1, 7, [[4096, 0]], true)]), BS, /lacks a meta context/],
    ['extents past the length', w.blockStatus(1, 7, [[4096, 0], [512, 1]]), BS, /past the requested length/],
    ['empty extent', w.blockStatus(1, 7, [[0, 0]]), BS, /length 0/],
    ['oversize block status', w.chunk(0, 5, 1, Buffer.alloc(0), 4 + 8 * (1 << 20) + 8), BS, /BLOCK_STATUS chunk \(length/],
    ['unknown non-error chunk type', w.chunk(1, 3, 1, Buffer.alloc(4)), READ_100, /unknown reply chunk type 3/],
    ['error chunk message too long', w.errorChunk(1, 5, 'abc', { msgLengthField: 40 }), READ_100, /longer than its chunk/],
    ['unknown error type, message too long', w.errorChunk(1, 5, 'abc', { type: 0x8007, msgLengthField: 400 }), READ_100, /longer than its chunk/],
    ['oversize error chunk', w.chunk(1, 0x8001, 1, Buffer.alloc(0), 1 << 20), READ_100, /bad error chunk length/],
  ];
  for (const [name, wire, requests, message, phase] of cases) {
    it(`rejects ${name} as a protocol error, cut anywhere`, () => {
      for (let cut = 0; cut <= wire.length; cut++) {
        const { events } = run(Buffer.concat([wire, w.none(1)]), requests, cutAt(cut), phase);
        const last = events[events.length - 1] as { type: string; code: string; message: string };
        assert.equal(last.type, 'protocolError', `cut ${cut}: ${JSON.stringify(events)}`);
        assert.equal(last.code, 'NBD_PROTOCOL');
        assert.match(last.message, message);
        assert.equal(events.filter((e) => (e as { type: string }).type === 'protocolError').length, 1);
      }
    });
  }
});

describe('NbdParser error chunks', () => {
  const READ: Requests = { 1: { command: NBD_CMD_READ, offset: 0, length: 512 }, 2: { command: NBD_CMD_READ, offset: 512, length: 8 } };

  it('fails only the request of an unknown error-type chunk and goes on', () => {
    const wire = Buffer.concat([w.errorChunk(1, 5, 'odd', { type: 0x80ff, tail: Buffer.alloc(9) }), w.offsetData(2, 512, pattern(8, 4), true)]);
    const { events, sinks } = run(wire, READ, byteByByte);
    const [first, second] = events as { type: string; cookie: number; error?: { errno: number; message: string } }[];
    assert.equal(first!.type, 'done');
    assert.equal(first!.error!.errno, 5);
    assert.match(first!.error!.message, /unknown error chunk type 0x80ff.*odd/);
    assert.equal(second!.type, 'data');
    assert.equal(sinks[2], pattern(8, 4).toString('hex'));
  });

  it('reads ERROR_OFFSET with its offset, keeps the first error and maps errno 0 to EPROTO', () => {
    const wire = Buffer.concat([
      w.offsetData(1, 0, pattern(256, 1)),
      w.errorChunk(1, 0, 'no errno', { type: NBD_REPLY_TYPE_ERROR_OFFSET, tail: w.errorOffsetTail(300), done: false }),
      w.errorChunk(1, 5, 'second', { done: true }),
    ]);
    const { events } = run(wire, READ, whole);
    const done = events.at(-1) as { type: string; error: { code: string; errno: number; message: string } };
    assert.equal(done.type, 'done');
    assert.equal(done.error.errno, 71);
    assert.match(done.error.message, /error at offset 300.*EPROTO: no errno/);
  });

  it('discards the payload of a request whose sink was withdrawn', () => {
    const wire = Buffer.concat([w.offsetData(1, 0, pattern(512, 9), true), w.offsetData(2, 512, pattern(8, 4), true)]);
    const targets = new Map<number, ReplyTarget>([
      [1, { command: NBD_CMD_READ, offset: 0, length: 512, sink: undefined }],
      [2, { command: NBD_CMD_READ, offset: 512, length: 8, sink: Buffer.alloc(8) }],
    ]);
    const done: number[] = [];
    const parser = new NbdParser({ lookup: (c) => targets.get(c), onEvent: (e) => { if (e.type === 'done') done.push(e.cookie); }, phase: 'transmission' });
    direct([100])(parser, wire);
    assert.deepEqual(done, [1, 2]);
    assert.deepEqual(targets.get(2)!.sink, pattern(8, 4));
  });
});
