// Option haggling (proto.md "Fixed newstyle negotiation"): STRUCTURED_REPLY, then
// SET_META_CONTEXT with the asked contexts, then GO asking INFO_BLOCK_SIZE. (The listing
// options, which only tests use, are in test/nbd/listing.ts on top of checked and
// structuredReplies.)

import { VircptError } from '../errors.js';
import {
  NBD_DEFAULT_MAX_PAYLOAD, NBD_INFO_BLOCK_SIZE, NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NBD_REP_ERR_TLS_REQD, NBD_REP_INFO, NBD_REP_META_CONTEXT,
} from './constants.js';
import { decodeInfo, decodeMetaContext, encodeGoData, encodeMetaContextData } from './codec.js';
import type { NbdConnection, OptionResult } from './connection.js';
import { NbdMetaContextError, NbdOptionError, protocolError } from './errors.js';
import { tlsError } from './tls.js';

export interface ExportEntry { name: string; description: string }

export interface BlockSize { minimum: number; preferred: number; maximum: number }

export interface ExportInfo {
  size: number;
  transmissionFlags: number;
  blockSize: BlockSize;
  /** Negotiated meta contexts: name -> id (ids are opaque, per connection). */
  contexts: ReadonlyMap<string, number>;
}

/** The server answers options with NBD_REP_ERR_TLS_REQD: it serves only over TLS. */
function tlsRequired(): VircptError {
  return tlsError('the NBD server demands TLS, and this connection has it off (nbd_tls=off): use nbd_tls=require with nbd_certs=DIR');
}

/** proto.md "Size constraints": what holds when the server advertises nothing. */
const DEFAULT_BLOCK_SIZE: BlockSize = { minimum: 1, preferred: 4096, maximum: NBD_DEFAULT_MAX_PAYLOAD };

export function checked(result: OptionResult, option: number, what: string): OptionResult {
  if (result.final.reply === NBD_REP_ERR_TLS_REQD) throw tlsRequired();
  if (result.final.reply !== NBD_REP_ACK) {
    throw new NbdOptionError(option, result.final.reply, result.final.data.toString('utf8'), what);
  }
  return result;
}

export async function structuredReplies(conn: NbdConnection): Promise<void> {
  const result = await conn.option(NBD_OPT_STRUCTURED_REPLY);
  if (result.final.reply === NBD_REP_ERR_TLS_REQD) throw tlsRequired();
  if (result.final.reply !== NBD_REP_ACK) {
    const cause = new NbdOptionError(NBD_OPT_STRUCTURED_REPLY, result.final.reply, result.final.data.toString('utf8'), 'structured replies');
    throw new VircptError('NBD_UNSUPPORTED', 'NBD server does not offer structured replies, which this client requires', { cause });
  }
}

async function setMetaContexts(conn: NbdConnection, exportName: string, queries: readonly string[]): Promise<Map<string, number>> {
  const result = checked(await conn.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextData(exportName, queries)),
    NBD_OPT_SET_META_CONTEXT, `meta contexts ${queries.join(', ')}`);
  const contexts = new Map<string, number>();
  for (const { reply, data } of result.replies) {
    const context = reply === NBD_REP_META_CONTEXT ? decodeMetaContext(data) : undefined;
    if (context === undefined) throw protocolError(`bad reply ${reply} to NBD_OPT_SET_META_CONTEXT`);
    contexts.set(context.name, context.id);
  }
  // QEMU drops an unknown dirty bitmap without a word: check that each asked one came back.
  const missing = queries.filter((q) => !contexts.has(q));
  if (missing.length > 0) throw new NbdMetaContextError(exportName, missing);
  return contexts;
}

function validBlockSize(b: BlockSize): boolean {
  const powerOf2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  return powerOf2(b.minimum) && b.minimum <= 65536 && powerOf2(b.preferred)
    && b.preferred >= b.minimum && b.maximum >= b.preferred;
}

async function go(conn: NbdConnection, exportName: string): Promise<Omit<ExportInfo, 'contexts'>> {
  const result = checked(await conn.option(NBD_OPT_GO, encodeGoData(exportName, [NBD_INFO_BLOCK_SIZE])),
    NBD_OPT_GO, `export '${exportName}'`);
  let exported: { size: number; transmissionFlags: number } | undefined;
  let blockSize = DEFAULT_BLOCK_SIZE;
  for (const { reply, data } of result.replies) {
    const info = reply === NBD_REP_INFO ? decodeInfo(data) : undefined;
    if (info === undefined) throw protocolError(`bad reply ${reply} to NBD_OPT_GO`);
    if (info.kind === 'export') exported = { size: info.size, transmissionFlags: info.transmissionFlags };
    // An invalid advertisement is ignored, as libnbd does; the defaults are always safe.
    if (info.kind === 'blockSize' && validBlockSize(info)) {
      blockSize = { minimum: info.minimum, preferred: info.preferred, maximum: info.maximum };
    }
  }
  if (exported === undefined) throw protocolError('NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
  return { ...exported, blockSize };
}

/** Runs the option phase on an open connection; on success it is in transmission. */
export async function negotiate(conn: NbdConnection, exportName: string, metaContexts: readonly string[]): Promise<ExportInfo> {
  await structuredReplies(conn);
  const contexts = metaContexts.length > 0 ? await setMetaContexts(conn, exportName, metaContexts) : new Map<string, number>();
  const info = await go(conn, exportName);
  conn.enterTransmission(contexts.values());
  return { ...info, contexts };
}
