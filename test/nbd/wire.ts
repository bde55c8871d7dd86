// A small encoder of what an NBD server sends, for feeding the parser recorded-style frames.
// Written from proto.md, independently of the client's own codec.

import {
  IHAVEOPT, NBDMAGIC, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REP_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC,
} from '../../src/nbd/constants.js';

const u16 = (n: number) => { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; };
const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; };
const u64 = (n: number | bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; };

export function greeting(handshakeFlags: number): Buffer {
  return Buffer.concat([u64(NBDMAGIC), u64(IHAVEOPT), u16(handshakeFlags)]);
}

export function optionReply(option: number, reply: number, data: Buffer = Buffer.alloc(0), lengthField = data.length): Buffer {
  return Buffer.concat([u64(NBD_REP_MAGIC), u32(option), u32(reply), u32(lengthField), data]);
}

export function infoExport(size: number, flags: number): Buffer {
  return Buffer.concat([u16(0), u64(size), u16(flags)]);
}

export function infoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  return Buffer.concat([u16(3), u32(minimum), u32(preferred), u32(maximum)]);
}

export function metaContext(id: number, name: string): Buffer {
  return Buffer.concat([u32(id), Buffer.from(name)]);
}

export function simpleReply(errno: number, cookie: number): Buffer {
  return Buffer.concat([u32(NBD_SIMPLE_REPLY_MAGIC), u32(errno), u64(cookie)]);
}

export function chunk(flags: number, type: number, cookie: number, payload: Buffer, lengthField = payload.length): Buffer {
  return Buffer.concat([u32(NBD_STRUCTURED_REPLY_MAGIC), u16(flags), u16(type), u64(cookie), u32(lengthField), payload]);
}

const doneFlag = (done: boolean) => (done ? NBD_REPLY_FLAG_DONE : 0);

export function offsetData(cookie: number, offset: number, data: Buffer, done = false): Buffer {
  return chunk(doneFlag(done), NBD_REPLY_TYPE_OFFSET_DATA, cookie, Buffer.concat([u64(offset), data]));
}

export function offsetHole(cookie: number, offset: number, length: number, done = false): Buffer {
  return chunk(doneFlag(done), NBD_REPLY_TYPE_OFFSET_HOLE, cookie, Buffer.concat([u64(offset), u32(length)]));
}

export function blockStatus(cookie: number, contextId: number, extents: [number, number][], done = false): Buffer {
  const body = extents.flatMap(([length, flags]) => [u32(length), u32(flags)]);
  return chunk(doneFlag(done), NBD_REPLY_TYPE_BLOCK_STATUS, cookie, Buffer.concat([u32(contextId), ...body]));
}

export function errorChunk(cookie: number, errno: number, message: string, options: { done?: boolean; type?: number; tail?: Buffer; msgLengthField?: number } = {}): Buffer {
  const msg = Buffer.from(message);
  const payload = Buffer.concat([u32(errno), u16(options.msgLengthField ?? msg.length), msg, options.tail ?? Buffer.alloc(0)]);
  return chunk(doneFlag(options.done ?? true), options.type ?? NBD_REPLY_TYPE_ERROR, cookie, payload);
}

export function errorOffsetTail(offset: number): Buffer {
  return u64(offset);
}

export function none(cookie: number): Buffer {
  return chunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, Buffer.alloc(0));
}
