// A pure parser of what an NBD server sends: bytes in (push(), or advanceDirect() after the
// socket read straight into readTarget()), typed events out. It never touches a socket and
// resumes at any byte boundary: each named state waits for a fixed header or a known number
// of payload bytes. It checks every chunk against the request it answers (proto.md
// "Structured reply types"), as libnbd's states-reply-structured.c does.

import {
  GREETING_SIZE, IHAVEOPT, NBDMAGIC, NBD_CMD_BLOCK_STATUS, NBD_CMD_READ,
  NBD_MAX_EXTENTS_PER_CHUNK, NBD_MAX_STRING, NBD_OPT_GO, NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR_BIT, NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REP_ACK,
  NBD_REP_MAGIC, NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC, OPTION_REPLY_HEADER_SIZE,
  SIMPLE_REPLY_SIZE, STRUCTURED_REPLY_HEADER_SIZE,
} from './constants.js';
import { decodeErrorChunk, decodeExtents } from './chunks.js';
import { readU64 } from './codec.js';
import { protocolError, serverError } from './errors.js';
import { ReplyProgress, describeRequest } from './progress.js';
import type { VircptError } from '../errors.js';

/** What the parser needs to know about a request in flight. */
export interface ReplyTarget {
  readonly command: number;
  readonly offset: number;
  readonly length: number;
  /** READ destination: export byte `offset + i` lands in `sink[i]`. Undefined: discard. */
  sink: Buffer | undefined;
}

export type ParserEvent =
  | { type: 'greeting'; handshakeFlags: number }
  | { type: 'optionReply'; option: number; reply: number; data: Buffer }
  | { type: 'data'; cookie: number; offset: number; length: number }
  | { type: 'hole'; cookie: number; offset: number; length: number }
  /** extents: [length0, flags0, length1, flags1, ...], the first starting at the request offset. */
  | { type: 'blockStatus'; cookie: number; contextId: number; extents: Uint32Array }
  | { type: 'done'; cookie: number; error: VircptError | undefined }
  | { type: 'protocolError'; error: VircptError };

export interface ParserOptions {
  lookup(cookie: number): ReplyTarget | undefined;
  onEvent(event: ParserEvent): void;
  /** Start after the handshake (tests of transmission replies alone). */
  phase?: 'handshake' | 'transmission';
}

type State =
  | 'GREETING' | 'OPTION_REPLY_HEADER' | 'OPTION_REPLY_PAYLOAD'
  | 'REPLY_MAGIC' | 'SIMPLE_REPLY' | 'CHUNK_HEADER' | 'CHUNK_PAYLOAD'
  | 'DATA_OFFSET' | 'DATA_PAYLOAD' | 'DEAD';

/** Option replies carry strings of at most 4096 bytes each. */
const MAX_OPTION_REPLY = 64 * 1024;
const MAX_ERROR_CHUNK = 6 + NBD_MAX_STRING + 8 + 1024;
const MAX_BLOCK_STATUS_CHUNK = 4 + 8 * NBD_MAX_EXTENTS_PER_CHUNK;
const DATA_OFFSET_END = STRUCTURED_REPLY_HEADER_SIZE + 8;

export class NbdParser {
  readonly #lookup: ParserOptions['lookup'];
  readonly #emit: ParserOptions['onEvent'];
  #state: State;
  readonly #hdr = Buffer.alloc(DATA_OFFSET_END);
  #have = 0;
  #want = 0;
  #payload = Buffer.alloc(0);
  #contexts = new Set<number>();
  readonly #progress = new Map<number, ReplyProgress>();
  // The chunk being parsed.
  #cookie = 0;
  #flags = 0;
  #type = 0;
  #target: ReplyTarget | undefined;
  #option = 0;
  #dataStart = 0;
  #dataPos = 0;
  #dataLeft = 0;

  constructor(options: ParserOptions) {
    this.#lookup = options.lookup;
    this.#emit = options.onEvent;
    this.#state = 'GREETING';
    if (options.phase === 'transmission') this.#expectHeader('REPLY_MAGIC', 4);
    else this.#expectHeader('GREETING', GREETING_SIZE);
  }

  get dead(): boolean { return this.#state === 'DEAD'; }

  /** The negotiated context ids; BLOCK_STATUS chunks for any other id are a protocol error. */
  setMetaContexts(ids: Iterable<number>): void { this.#contexts = new Set(ids); }

  push(data: Buffer): void {
    let at = 0;
    while (at < data.length && this.#state !== 'DEAD') {
      if (this.#state === 'DATA_PAYLOAD') at += this.#stepData(data, at);
      else if (this.#state === 'OPTION_REPLY_PAYLOAD' || this.#state === 'CHUNK_PAYLOAD') at += this.#stepPayload(data, at);
      else at += this.#stepHeader(data, at);
    }
  }

  /** The rest of the current OFFSET_DATA payload, in its sink: a socket may read into it. */
  readTarget(): Buffer | undefined {
    const sink = this.#target?.sink;
    if (this.#state !== 'DATA_PAYLOAD' || sink === undefined) return undefined;
    const start = this.#dataPos - this.#target!.offset;
    return sink.subarray(start, start + this.#dataLeft);
  }

  /** The request whose payload readTarget() returns (the sink's owner), if any. */
  readOwner(): ReplyTarget | undefined {
    return this.readTarget() === undefined ? undefined : this.#target;
  }

  /** n bytes were read straight into the buffer readTarget() returned. */
  advanceDirect(n: number): void {
    if (this.#state !== 'DATA_PAYLOAD' || n > this.#dataLeft) throw new RangeError('advanceDirect outside a data payload');
    this.#advanceData(n);
  }

  #stepHeader(data: Buffer, at: number): number {
    const n = Math.min(this.#want - this.#have, data.length - at);
    data.copy(this.#hdr, this.#have, at, at + n);
    this.#have += n;
    if (this.#have === this.#want) this.#headerComplete();
    return n;
  }

  #stepPayload(data: Buffer, at: number): number {
    const n = Math.min(this.#payload.length - this.#have, data.length - at);
    data.copy(this.#payload, this.#have, at, at + n);
    this.#have += n;
    if (this.#have === this.#payload.length) this.#payloadComplete();
    return n;
  }

  #stepData(data: Buffer, at: number): number {
    const n = Math.min(this.#dataLeft, data.length - at);
    const sink = this.#target!.sink;
    if (sink !== undefined) data.copy(sink, this.#dataPos - this.#target!.offset, at, at + n);
    this.#advanceData(n);
    return n;
  }

  #advanceData(n: number): void {
    this.#dataPos += n;
    this.#dataLeft -= n;
    if (this.#dataLeft > 0) return;
    this.#emit({ type: 'data', cookie: this.#cookie, offset: this.#dataStart, length: this.#dataPos - this.#dataStart });
    this.#finishChunk();
  }

  #expectHeader(state: State, want: number, keep = false): void {
    this.#state = state;
    this.#want = want;
    if (!keep) this.#have = 0;
  }

  #expectPayload(state: State, length: number): void {
    this.#state = state;
    this.#payload = Buffer.allocUnsafe(length);
    this.#have = 0;
    if (length === 0) this.#payloadComplete();
  }

  #die(message: string): void {
    if (this.#state === 'DEAD') return;
    this.#state = 'DEAD';
    this.#emit({ type: 'protocolError', error: protocolError(message) });
  }

  #headerComplete(): void {
    switch (this.#state) {
      case 'GREETING': return this.#onGreeting();
      case 'OPTION_REPLY_HEADER': return this.#onOptionReplyHeader();
      case 'REPLY_MAGIC': return this.#onReplyMagic();
      case 'SIMPLE_REPLY': return this.#onSimpleReply();
      case 'CHUNK_HEADER': return this.#onChunkHeader();
      case 'DATA_OFFSET': return this.#onDataOffset();
      default: throw new Error(`header in state ${this.#state}`);
    }
  }

  #payloadComplete(): void {
    if (this.#state === 'OPTION_REPLY_PAYLOAD') {
      this.#emit({ type: 'optionReply', option: this.#option, reply: this.#type, data: this.#payload });
      // proto.md NBD_OPT_GO: after NBD_REP_ACK "transmission mode is entered immediately".
      if (this.#option === NBD_OPT_GO && this.#type === NBD_REP_ACK) this.#expectHeader('REPLY_MAGIC', 4);
      else this.#expectHeader('OPTION_REPLY_HEADER', OPTION_REPLY_HEADER_SIZE);
      return;
    }
    if (this.#type === NBD_REPLY_TYPE_OFFSET_HOLE) this.#onHole();
    else if (this.#type === NBD_REPLY_TYPE_BLOCK_STATUS) this.#onBlockStatus();
    else this.#onErrorChunk();
  }

  #onGreeting(): void {
    if (this.#hdr.readBigUInt64BE(0) !== NBDMAGIC) return this.#die('not an NBD server (bad greeting magic)');
    if (this.#hdr.readBigUInt64BE(8) !== IHAVEOPT) return this.#die('oldstyle negotiation is not supported');
    this.#emit({ type: 'greeting', handshakeFlags: this.#hdr.readUInt16BE(16) });
    this.#expectHeader('OPTION_REPLY_HEADER', OPTION_REPLY_HEADER_SIZE);
  }

  #onOptionReplyHeader(): void {
    if (this.#hdr.readBigUInt64BE(0) !== NBD_REP_MAGIC) return this.#die('bad option reply magic');
    this.#option = this.#hdr.readUInt32BE(8);
    this.#type = this.#hdr.readUInt32BE(12);
    const length = this.#hdr.readUInt32BE(16);
    if (length > MAX_OPTION_REPLY) return this.#die(`option reply of ${length} bytes is too long`);
    this.#expectPayload('OPTION_REPLY_PAYLOAD', length);
  }

  #onReplyMagic(): void {
    const magic = this.#hdr.readUInt32BE(0);
    if (magic === NBD_STRUCTURED_REPLY_MAGIC) this.#expectHeader('CHUNK_HEADER', STRUCTURED_REPLY_HEADER_SIZE, true);
    else if (magic === NBD_SIMPLE_REPLY_MAGIC) this.#expectHeader('SIMPLE_REPLY', SIMPLE_REPLY_SIZE, true);
    else this.#die(`bad reply magic 0x${magic.toString(16)}`);
  }

  #begin(cookie: number): ReplyTarget | undefined {
    this.#cookie = cookie;
    this.#target = this.#lookup(cookie);
    if (this.#target === undefined) this.#die(`reply for unknown cookie ${cookie}`);
    return this.#target;
  }

  #onSimpleReply(): void {
    const errno = this.#hdr.readUInt32BE(4);
    const target = this.#begin(readU64(this.#hdr, 8));
    if (target === undefined) return;
    // proto.md: with structured replies a server "MUST NOT use a simple reply for NBD_CMD_READ"
    // carrying data; an error-only simple reply has no payload and is safe to take.
    if (errno === 0 && target.command === NBD_CMD_READ) return this.#die('simple reply with data to NBD_CMD_READ');
    if (errno !== 0) this.#progressOf(this.#cookie).error ??= serverError(errno, '', describeRequest(target));
    this.#flags = NBD_REPLY_FLAG_DONE;
    this.#finishChunk();
  }

  #onChunkHeader(): void {
    this.#flags = this.#hdr.readUInt16BE(4);
    this.#type = this.#hdr.readUInt16BE(6);
    const length = this.#hdr.readUInt32BE(16);
    const target = this.#begin(readU64(this.#hdr, 8));
    if (target === undefined) return;
    const isRead = target.command === NBD_CMD_READ;
    switch (this.#type) {
      case NBD_REPLY_TYPE_NONE:
        if (length !== 0 || !(this.#flags & NBD_REPLY_FLAG_DONE)) return this.#die('bad NBD_REPLY_TYPE_NONE chunk');
        return this.#finishChunk();
      case NBD_REPLY_TYPE_OFFSET_DATA:
        if (!isRead || length < 9) return this.#die(`bad NBD_REPLY_TYPE_OFFSET_DATA chunk (length ${length})`);
        this.#dataLeft = length - 8;
        return this.#expectHeader('DATA_OFFSET', DATA_OFFSET_END, true);
      case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (!isRead || length !== 12) return this.#die('bad NBD_REPLY_TYPE_OFFSET_HOLE chunk');
        return this.#expectPayload('CHUNK_PAYLOAD', length);
      case NBD_REPLY_TYPE_BLOCK_STATUS:
        if (target.command !== NBD_CMD_BLOCK_STATUS || length < 12 || (length - 4) % 8 !== 0 || length > MAX_BLOCK_STATUS_CHUNK) {
          return this.#die(`bad NBD_REPLY_TYPE_BLOCK_STATUS chunk (length ${length})`);
        }
        return this.#expectPayload('CHUNK_PAYLOAD', length);
      default:
        // proto.md: an unknown type with bit 15 set is an error chunk (fail this request);
        // any other unknown type MUST end the connection.
        if (!(this.#type & NBD_REPLY_TYPE_ERROR_BIT)) return this.#die(`unknown reply chunk type ${this.#type}`);
        if (length < 6 || length > MAX_ERROR_CHUNK) return this.#die(`bad error chunk length ${length}`);
        return this.#expectPayload('CHUNK_PAYLOAD', length);
    }
  }

  /** Checks the chunk's range against its request and against earlier chunks. */
  #claim(offset: number, length: number, kind: string): boolean {
    const why = this.#progressOf(this.#cookie).claim(offset, length, kind);
    if (why !== undefined) this.#die(why);
    return why === undefined;
  }

  #onDataOffset(): void {
    const offset = readU64(this.#hdr, STRUCTURED_REPLY_HEADER_SIZE);
    if (!this.#claim(offset, this.#dataLeft, 'data')) return;
    this.#dataStart = this.#dataPos = offset;
    this.#state = 'DATA_PAYLOAD';
  }

  #onHole(): void {
    const offset = readU64(this.#payload, 0);
    const length = this.#payload.readUInt32BE(8);
    if (length === 0) return this.#die('empty hole chunk');
    if (!this.#claim(offset, length, 'hole')) return;
    const t = this.#target!;
    t.sink?.fill(0, offset - t.offset, offset - t.offset + length);
    this.#emit({ type: 'hole', cookie: this.#cookie, offset, length });
    this.#finishChunk();
  }

  #onBlockStatus(): void {
    const contextId = this.#payload.readUInt32BE(0);
    const why = this.#progressOf(this.#cookie).claimContext(contextId, this.#contexts);
    if (why !== undefined) return this.#die(why);
    const extents = decodeExtents(this.#payload, this.#target!.length);
    if (typeof extents === 'string') return this.#die(extents);
    this.#emit({ type: 'blockStatus', cookie: this.#cookie, contextId, extents });
    this.#finishChunk();
  }

  #onErrorChunk(): void {
    const chunk = decodeErrorChunk(this.#payload, this.#type);
    if (typeof chunk === 'string') return this.#die(chunk);
    const what = describeRequest(this.#target!) + chunk.detail;
    this.#progressOf(this.#cookie).error ??= serverError(chunk.errno, chunk.message, what);
    this.#finishChunk();
  }

  #progressOf(cookie: number): ReplyProgress {
    let progress = this.#progress.get(cookie);
    if (progress === undefined) {
      progress = new ReplyProgress(this.#target!);
      this.#progress.set(cookie, progress);
    }
    return progress;
  }

  #finishChunk(): void {
    if (this.#flags & NBD_REPLY_FLAG_DONE) this.#finishReply();
    if (this.#state !== 'DEAD') this.#expectHeader('REPLY_MAGIC', 4);
  }

  #finishReply(): void {
    const progress = this.#progressOf(this.#cookie);
    this.#progress.delete(this.#cookie);
    const missing = progress.incomplete(this.#contexts);
    if (missing !== undefined) return this.#die(missing);
    this.#emit({ type: 'done', cookie: this.#cookie, error: progress.error });
  }
}
