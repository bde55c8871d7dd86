// Encoders for what the client sends and decoders for option-reply payloads. All fields are
// big-endian (proto.md "Conventions"). 64-bit fields travel as JS numbers: offsets and sizes
// of real exports stay far below 2^53.

import {
  IHAVEOPT,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_REQUEST_MAGIC,
  OPTION_HEADER_SIZE,
  REQUEST_SIZE,
} from './constants.js';

const TWO_32 = 2 ** 32;

export function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}

export function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value % TWO_32 >>> 0, at + 4);
}

/** C: 32 bits, client flags. */
export function encodeClientFlags(flags: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeUInt32BE(flags >>> 0, 0);
  return buf;
}

/** C: IHAVEOPT, u32 option, u32 length, data. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(OPTION_HEADER_SIZE + data.length);
  buf.writeBigUInt64BE(IHAVEOPT, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(data.length, 12);
  data.copy(buf, OPTION_HEADER_SIZE);
  return buf;
}

function lengthPrefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const buf = Buffer.alloc(4 + bytes.length);
  buf.writeUInt32BE(bytes.length, 0);
  bytes.copy(buf, 4);
  return buf;
}

/** NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, u16 x n info requests. */
export function encodeGoData(exportName: string, infos: readonly number[]): Buffer {
  const tail = Buffer.alloc(2 + 2 * infos.length);
  tail.writeUInt16BE(infos.length, 0);
  infos.forEach((info, i) => tail.writeUInt16BE(info, 2 + 2 * i));
  return Buffer.concat([lengthPrefixed(exportName), tail]);
}

/** NBD_OPT_{LIST,SET}_META_CONTEXT data: export name, u32 count, length-prefixed queries. */
export function encodeMetaContextData(exportName: string, queries: readonly string[]): Buffer {
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  return Buffer.concat([lengthPrefixed(exportName), count, ...queries.map(lengthPrefixed)]);
}

/** C: magic, u16 flags, u16 type, u64 cookie, u64 offset, u32 length (proto.md "Request message"). */
export function encodeRequest(
  flags: number, type: number, cookie: number, offset: number, length: number,
): Buffer {
  const buf = Buffer.allocUnsafe(REQUEST_SIZE);
  buf.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  writeU64(buf, cookie, 8);
  writeU64(buf, offset, 16);
  buf.writeUInt32BE(length, 24);
  return buf;
}

export type InfoReply =
  | { kind: 'export'; size: number; transmissionFlags: number }
  | { kind: 'blockSize'; minimum: number; preferred: number; maximum: number }
  | { kind: 'name'; name: string }
  | { kind: 'description'; description: string }
  | { kind: 'unknown'; infoType: number };

/** Decodes an NBD_REP_INFO payload; undefined when its length does not fit its type. */
export function decodeInfo(data: Buffer): InfoReply | undefined {
  if (data.length < 2) return undefined;
  const infoType = data.readUInt16BE(0);
  switch (infoType) {
    case NBD_INFO_EXPORT:
      if (data.length !== 12) return undefined;
      return { kind: 'export', size: readU64(data, 2), transmissionFlags: data.readUInt16BE(10) };
    case NBD_INFO_BLOCK_SIZE:
      if (data.length !== 14) return undefined;
      return {
        kind: 'blockSize',
        minimum: data.readUInt32BE(2),
        preferred: data.readUInt32BE(6),
        maximum: data.readUInt32BE(10),
      };
    case NBD_INFO_NAME:
      return { kind: 'name', name: data.toString('utf8', 2) };
    case NBD_INFO_DESCRIPTION:
      return { kind: 'description', description: data.toString('utf8', 2) };
    default:
      // proto.md: "The client MUST ignore information replies it does not understand."
      return { kind: 'unknown', infoType };
  }
}

/** NBD_REP_SERVER: u32 name length, name, then an optional human-readable description. */
export function decodeServer(data: Buffer): { name: string; description: string } | undefined {
  if (data.length < 4) return undefined;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 4) return undefined;
  return {
    name: data.toString('utf8', 4, 4 + nameLength),
    description: data.toString('utf8', 4 + nameLength),
  };
}

/** NBD_REP_META_CONTEXT: u32 context id, name. */
export function decodeMetaContext(data: Buffer): { id: number; name: string } | undefined {
  if (data.length < 4) return undefined;
  return { id: data.readUInt32BE(0), name: data.toString('utf8', 4) };
}
