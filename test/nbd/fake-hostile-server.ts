// A FAKE NBD server for the tests of a hostile or broken server: no real server can be told to
// send a bad magic, a chunk longer than asked or an unknown cookie. It does the fixed newstyle
// handshake with structured replies (written from proto.md), serves `content` read-only, and
// lets the test decide, per read request, what goes on the wire instead of the honest reply.
import net from 'node:net';
import {
  IHAVEOPT, NBD_CMD_DISC, NBD_CMD_READ, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY, NBD_OPT_ABORT, NBD_OPT_GO, NBD_REP_ACK, NBD_REP_ERR_UNSUP, NBD_REP_INFO,
} from '../../src/nbd/constants.js';
import { greeting, infoExport, offsetData, optionReply } from './wire.js';
import { makeTempDir } from './servers.js';

export interface ReadRequest { cookie: number; offset: number; length: number; index: number }

/** What the fake sends for a read: frames to write (then maybe more later), or nothing. */
export interface Answer {
  frames?: Buffer[];
  /** Close the connection after the frames. */
  close?: boolean;
  /** Written when the test calls release() (a reply held back half way). */
  later?: Buffer[];
}

export interface FakeHostileServer {
  socketPath: string;
  /** Read requests seen, in order, over all connections. */
  readonly requests: ReadRequest[];
  /** The honest reply to a read. */
  honest(r: ReadRequest): Buffer;
  /** Sends every answer's `later` frames held so far. */
  release(): void;
  stop(): Promise<void>;
}

export async function startFakeHostileServer(content: Buffer, answer: (r: ReadRequest) => Answer | undefined): Promise<FakeHostileServer> {
  const dir = await makeTempDir('vircpt-fake');
  const socketPath = `${dir.path}/fake.sock`;
  const requests: ReadRequest[] = [];
  const held: Array<() => void> = [];
  const sockets = new Set<net.Socket>();
  const honest = (r: ReadRequest) => offsetData(r.cookie, r.offset, content.subarray(r.offset, r.offset + r.length), true);
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    serve(socket, content.length, (r) => {
      const req = { ...r, index: requests.length };
      requests.push(req);
      const a = answer(req) ?? { frames: [honest(req)] };
      for (const f of a.frames ?? []) socket.write(f);
      if (a.later) held.push(() => { for (const f of a.later!) socket.write(f); });
      if (a.close) socket.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    socketPath, requests, honest,
    release: () => { for (const send of held.splice(0)) send(); },
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
      await dir.remove();
    },
  };
}

/** The handshake, then transmission: every read goes to onRead; DISC ends the connection. */
function serve(socket: net.Socket, size: number, onRead: (r: Omit<ReadRequest, 'index'>) => void): void {
  let buf = Buffer.alloc(0);
  let phase: 'flags' | 'options' | 'transmission' = 'flags';
  socket.write(greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  socket.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (phase === 'flags') {
        if (buf.length < 4) return;
        buf = buf.subarray(4);
        phase = 'options';
      } else if (phase === 'options') {
        if (buf.length < 16 || buf.length < 16 + buf.readUInt32BE(12)) return;
        if (buf.readBigUInt64BE(0) !== IHAVEOPT) return void socket.destroy();
        const option = buf.readUInt32BE(8);
        buf = buf.subarray(16 + buf.readUInt32BE(12));
        if (option === NBD_OPT_ABORT) return void socket.end(optionReply(option, NBD_REP_ACK));
        if (option === NBD_OPT_GO) {
          socket.write(optionReply(option, NBD_REP_INFO, infoExport(size, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY)));
          socket.write(optionReply(option, NBD_REP_ACK));
          phase = 'transmission';
        } else if (option === 8 || option === 10) {
          socket.write(optionReply(option, NBD_REP_ACK)); // structured replies; meta contexts (none asked)
        } else {
          socket.write(optionReply(option, NBD_REP_ERR_UNSUP));
        }
      } else {
        if (buf.length < 28) return;
        const type = buf.readUInt16BE(6);
        const req = { cookie: Number(buf.readBigUInt64BE(8)), offset: Number(buf.readBigUInt64BE(16)), length: buf.readUInt32BE(24) };
        buf = buf.subarray(28);
        if (type === NBD_CMD_DISC) return void socket.end();
        if (type === NBD_CMD_READ) onRead(req);
      }
    }
  });
}
