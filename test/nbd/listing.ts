// The two listing options of the NBD handshake (proto.md NBD_OPT_LIST, NBD_OPT_LIST_META_CONTEXT),
// which the product never needs and the tests use to check what a server offers. Each runs on a
// connection of its own that ends with NBD_OPT_ABORT.
import {
  NBD_OPT_LIST, NBD_OPT_LIST_META_CONTEXT, NBD_REP_META_CONTEXT, NBD_REP_SERVER,
} from '../../src/nbd/constants.js';
import { decodeMetaContext, decodeServer, encodeMetaContextData } from '../../src/nbd/codec.js';
import { NbdConnection, type ConnectionOptions } from '../../src/nbd/connection.js';
import { protocolError } from '../../src/nbd/errors.js';
import { checked, structuredReplies, type ExportEntry } from '../../src/nbd/handshake.js';

async function withOptionPhase<T>(options: ConnectionOptions, run: (conn: NbdConnection) => Promise<T>): Promise<T> {
  const conn = await NbdConnection.open(options);
  try {
    return await run(conn);
  } finally {
    await conn.close();
  }
}

/** NBD_OPT_LIST: the server's exports. */
export function listExports(options: ConnectionOptions): Promise<ExportEntry[]> {
  return withOptionPhase(options, async (conn) => {
    const result = checked(await conn.option(NBD_OPT_LIST), NBD_OPT_LIST, 'listing exports');
    return result.replies.map(({ reply, data }) => {
      const entry = reply === NBD_REP_SERVER ? decodeServer(data) : undefined;
      if (entry === undefined) throw protocolError(`bad reply ${reply} to NBD_OPT_LIST`);
      return entry;
    });
  });
}

/** NBD_OPT_LIST_META_CONTEXT: context names matching the queries (all of them with none). */
export function listMetaContexts(options: ConnectionOptions, exportName: string, queries: readonly string[] = []): Promise<string[]> {
  return withOptionPhase(options, async (conn) => {
    await structuredReplies(conn); // proto.md: SHOULD NOT be requested before structured replies
    const result = checked(await conn.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextData(exportName, queries)),
      NBD_OPT_LIST_META_CONTEXT, `listing meta contexts of '${exportName}'`);
    return result.replies.map(({ reply, data }) => {
      const context = reply === NBD_REP_META_CONTEXT ? decodeMetaContext(data) : undefined;
      if (context === undefined) throw protocolError(`bad reply ${reply} to NBD_OPT_LIST_META_CONTEXT`);
      return context.name;
    });
  });
}
