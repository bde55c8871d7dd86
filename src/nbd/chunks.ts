// Decoders of structured reply chunk payloads (proto.md "Structured reply types"). Each
// returns its result, or a string saying why the chunk is malformed (a protocol error).

import { EPROTO, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_OFFSET } from './constants.js';
import { readU64 } from './codec.js';

/**
 * NBD_REPLY_TYPE_BLOCK_STATUS after its context id: [length0, flags0, length1, flags1, ...].
 * proto.md: no extent is empty, and the first N-1 sum to less than the requested length.
 */
export function decodeExtents(payload: Buffer, requestLength: number): Uint32Array | string {
  const extents = new Uint32Array((payload.length - 4) / 4);
  let sum = 0;
  for (let i = 0; i < extents.length; i += 2) {
    if (sum >= requestLength) return 'block status extents past the requested length';
    const length = payload.readUInt32BE(4 + 4 * i);
    if (length === 0) return 'block status extent of length 0';
    extents[i] = length;
    extents[i + 1] = payload.readUInt32BE(8 + 4 * i);
    sum += length;
  }
  return extents;
}

export interface ErrorChunk { errno: number; message: string; detail: string }

/** Any error chunk (bit 15 set): u32 error, u16 message length, message, type-specific tail. */
export function decodeErrorChunk(payload: Buffer, type: number): ErrorChunk | string {
  const msgLength = payload.readUInt16BE(4);
  // proto.md: a message longer than the chunk MUST end the connection.
  if (msgLength > payload.length - 6) return 'error message longer than its chunk';
  let detail = '';
  if (type === NBD_REPLY_TYPE_ERROR_OFFSET && payload.length === 6 + msgLength + 8) {
    detail = ` (error at offset ${readU64(payload, 6 + msgLength)})`;
  } else if (type !== NBD_REPLY_TYPE_ERROR && type !== NBD_REPLY_TYPE_ERROR_OFFSET) {
    detail = ` (unknown error chunk type 0x${type.toString(16)})`;
  }
  return {
    errno: payload.readUInt32BE(0) || EPROTO, // proto.md: the error MUST be nonzero; libnbd says EPROTO
    message: payload.toString('utf8', 6, 6 + msgLength),
    detail,
  };
}
