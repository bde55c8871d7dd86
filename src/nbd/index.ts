// The NBD client's public API.

export { NbdClient, type NbdClientOptions } from './client.js';
export { NbdPool, type NbdPoolOptions } from './pool.js';
export { type BlockSize, type ExportEntry, type ExportInfo } from './handshake.js';
export { type ConnectionOptions, type SocketTarget } from './connection.js';
export { mergeExtents, type Extent } from './extents.js';
export { NbdMetaContextError, NbdOptionError, errnoName } from './errors.js';
export { parseNbdUri, formatNbdUri, NBD_DEFAULT_PORT, type NbdUri } from './uri.js';
export { NBD_STATE_HOLE, NBD_STATE_ZERO, NBD_STATE_DIRTY, NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_READ_ONLY } from './constants.js';
export { NbdParser, type ParserEvent, type ReplyTarget } from './parser.js';
export { DEFAULT_NBD_CERTS, NBD_TLS_MODES, loadCredentials, type NbdTlsMode, type NbdTlsOptions } from './tls.js';
