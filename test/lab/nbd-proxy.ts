// A corrupting NBD proxy of the tests' own, put between the client and a real NBD server on a
// Unix socket: every byte passes through unchanged, except the first reply chunk to a read on
// each connection, whose magic it breaks (so every connection of a client fails once it reads). A broken payload byte cannot be seen by any NBD client (the protocol has
// no checksums), so the corruption a client can and must catch is a broken frame.
// It follows both directions as proto.md lays them out (fixed newstyle, structured replies, no
// extended headers: what our client asks of QEMU 7.2): the client's options up to NBD_OPT_GO,
// then 28-byte requests; the server's greeting, option replies up to the ACK of NBD_OPT_GO,
// then simple (16-byte) and structured (20-byte header + payload) replies.
import net from 'node:net';
import { rm } from 'node:fs/promises';

const OPT_HEADER = 16; // IHAVEOPT, option, length
const OPT_REPLY_HEADER = 20; // magic, option, type, length
const GREETING = 18;
const REQUEST = 28;
const NBD_OPT_GO = 7;
const NBD_REP_ACK = 1;
const NBD_CMD_READ = 0;
const NBD_CMD_WRITE = 1;
const SIMPLE_MAGIC = 0x67446698;
const STRUCTURED_MAGIC = 0x668e33ef;
const STRUCTURED_HEADER = 20;
const SIMPLE_HEADER = 16;

export interface CorruptingProxy {
  readonly socketPath: string;
  /** Replies broken so far (at most one per connection). */
  readonly corrupted: number;
  /** Connections the proxy carried. */
  readonly connections: number;
  close(): Promise<void>;
}

/** Consumes whole frames from a growing buffer: `frame` returns a frame's length once known, or 0. */
class Frames {
  #buf: Buffer = Buffer.alloc(0);
  push(data: Buffer, frame: (buf: Buffer) => number, each: (f: Buffer) => Buffer): Buffer[] {
    this.#buf = this.#buf.length === 0 ? data : Buffer.concat([this.#buf, data]);
    const out: Buffer[] = [];
    for (let n = frame(this.#buf); n > 0 && this.#buf.length >= n; n = frame(this.#buf)) {
      out.push(each(this.#buf.subarray(0, n)));
      this.#buf = this.#buf.subarray(n);
    }
    return out;
  }
}

function carry(client: net.Socket, upstreamPath: string, state: { corrupted: number }): void {
  const server = net.connect(upstreamPath);
  const reads = new Set<string>();
  let broken = false;
  // Client side: 4 bytes of flags, options until NBD_OPT_GO, then requests.
  let cPhase: 'flags' | 'options' | 'requests' = 'flags';
  const cFrames = new Frames();
  client.on('data', (data: Buffer) => {
    // Bytes are forwarded as they come; the parse only learns which cookies are reads.
    server.write(data);
    cFrames.push(data, (b) => {
      if (cPhase === 'flags') return 4;
      if (cPhase === 'options') return b.length < OPT_HEADER ? 0 : OPT_HEADER + b.readUInt32BE(12);
      if (b.length < REQUEST) return 0;
      return REQUEST + (b.readUInt16BE(6) === NBD_CMD_WRITE ? b.readUInt32BE(24) : 0);
    }, (f) => {
      if (cPhase === 'flags') cPhase = 'options';
      else if (cPhase === 'options') { if (f.readUInt32BE(8) === NBD_OPT_GO) cPhase = 'requests'; }
      else if (f.readUInt16BE(6) === NBD_CMD_READ) reads.add(f.subarray(8, 16).toString('hex'));
      return f;
    });
  });
  // Server side: the greeting, option replies until GO's ACK, then replies; one read's chunk broken.
  let sPhase: 'greeting' | 'options' | 'replies' = 'greeting';
  const sFrames = new Frames();
  server.on('data', (data: Buffer) => {
    let frames: Buffer[];
    try {
      frames = sFrames.push(data, (b) => {
      if (sPhase === 'greeting') return GREETING;
      if (sPhase === 'options') return b.length < OPT_REPLY_HEADER ? 0 : OPT_REPLY_HEADER + b.readUInt32BE(16);
      if (b.length < 4) return 0;
      if (b.readUInt32BE(0) === SIMPLE_MAGIC) return SIMPLE_HEADER;
      if (b.readUInt32BE(0) !== STRUCTURED_MAGIC) throw new Error('nbd-proxy: the server sent a frame it does not know');
      return b.length < STRUCTURED_HEADER ? 0 : STRUCTURED_HEADER + b.readUInt32BE(16);
    }, (f) => {
      if (sPhase === 'greeting') sPhase = 'options';
      else if (sPhase === 'options') { if (f.readUInt32BE(8) === NBD_OPT_GO && f.readUInt32BE(12) === NBD_REP_ACK) sPhase = 'replies'; }
      else if (!broken && f.readUInt32BE(0) === STRUCTURED_MAGIC && reads.has(f.subarray(8, 16).toString('hex'))) {
        state.corrupted++;
        broken = true;
        const bad = Buffer.from(f);
        bad[0] = bad[0]! ^ 0xff; // the magic: no longer a reply
        return bad;
      }
      return f;
    });
    } catch {
      end(); // a frame it does not know: the test sees the connection end
      return;
    }
    for (const f of frames) client.write(f);
  });
  const end = () => { client.destroy(); server.destroy(); };
  client.on('close', end).on('error', end);
  server.on('close', end).on('error', end);
}

/** Listens on `socketPath`, carrying each connection to the NBD server at `upstreamPath`. */
export async function startCorruptingProxy(socketPath: string, upstreamPath: string): Promise<CorruptingProxy> {
  const state = { corrupted: 0, connections: 0 };
  const sockets = new Set<net.Socket>();
  const listener = net.createServer((c) => {
    state.connections++;
    sockets.add(c);
    c.on('close', () => sockets.delete(c));
    carry(c, upstreamPath, state);
  });
  await new Promise<void>((resolve, reject) => listener.once('error', reject).listen(socketPath, resolve));
  return {
    socketPath,
    get corrupted() { return state.corrupted; },
    get connections() { return state.connections; },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => listener.close(() => resolve()));
      await rm(socketPath, { force: true });
    },
  };
}
